"""One set of sandbox settings for every caller (rewards, curation, evaluation, the GRPO trainer).

:class:`SandboxSettings` holds every knob of the test sandbox and the mutation scorer with one
documented default each. The reward functions, ``tests_exec_eval`` (curation YAML: a
``sandbox:`` mapping), ``fastdistill eval`` (``--sandbox-*`` flags) and ``GRPOConfig``
(``sandbox`` field, a dict or JSON string on the command line) all build one and hand it down.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class SandboxSettings:
    """Settings of the test sandbox and the mutation scorer.

    Args:
        test_timeout_s: wall-clock budget of one test run (all its repeats), in seconds.
        baseline_timeout_s: wall-clock budget of the tests' run on the original code before mutants.
        pair_timeout_s: wall-clock budget of one whole mutation score (baseline + every mutant);
            mutants not reached in time count as survived.
        mutant_timeout_factor: a mutant's wall-clock and CPU budget is this multiple of the
            baseline's wall-clock / CPU time (bounded below by the two minimums).
        mutant_timeout_min_s: minimum wall-clock budget of a mutant.
        mutant_cpu_min_s: minimum CPU-time budget of a mutant (hot infinite loops end after it).
        memory_mb: memory budget: the limit of each worker's memory cgroup (all its processes
            together) where the host has one, else every sandboxed process's address-space limit.
        max_processes: most processes (threads included) alive at once in one worker.
        workers: sandbox workers run in parallel (``None``: one per CPU core).
        max_mutants: mutants sampled per code under test (``None``: all of them).
        seed: seed of the mutant sample (samples are nested across ``max_mutants``).
        keep_warm: keep workers alive between calls (a warm pool, stopped after idling and at exit).
    """

    test_timeout_s: float = field(default=10.0, metadata={"help": "Wall-clock budget of one test run (s)."})
    baseline_timeout_s: float = field(default=10.0, metadata={"help": "Budget of the baseline run before mutants (s)."})
    pair_timeout_s: float = field(default=60.0, metadata={"help": "Budget of one whole mutation score (s)."})
    mutant_timeout_factor: float = field(default=3.0, metadata={"help": "Mutant budget, multiple of the baseline."})
    mutant_timeout_min_s: float = field(default=0.3, metadata={"help": "Minimum wall-clock budget of a mutant (s)."})
    mutant_cpu_min_s: float = field(default=0.02, metadata={"help": "Minimum CPU budget of a mutant (s)."})
    memory_mb: int = field(default=1024, metadata={"help": "Memory budget per worker (MB)."})
    max_processes: int = field(default=64, metadata={"help": "Most processes alive at once in one worker."})
    workers: int | None = field(default=None, metadata={"help": "Parallel sandbox workers (None: one per core)."})
    max_mutants: int | None = field(default=20, metadata={"help": "Mutants per code under test (None: all)."})
    seed: int = field(default=0, metadata={"help": "Seed of the mutant sample."})
    keep_warm: bool = field(default=True, metadata={"help": "Keep sandbox workers warm between calls."})

    def __post_init__(self):
        for name in ("test_timeout_s", "baseline_timeout_s", "pair_timeout_s", "mutant_timeout_factor",
                     "mutant_timeout_min_s", "mutant_cpu_min_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"SandboxSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if int(self.memory_mb) < 64:
            raise ValueError(f"SandboxSettings.memory_mb must be >= 64, got {self.memory_mb!r}")
        if int(self.max_processes) < 4:
            raise ValueError(f"SandboxSettings.max_processes must be >= 4, got {self.max_processes!r}")
        if self.workers is not None and int(self.workers) < 1:
            raise ValueError(f"SandboxSettings.workers must be >= 1 or None, got {self.workers!r}")
        if self.max_mutants is not None and int(self.max_mutants) < 0:
            raise ValueError(f"SandboxSettings.max_mutants must be >= 0 or None, got {self.max_mutants!r}")

    @property
    def n_workers(self) -> int:
        """``workers``, or the number of CPU cores when it is None."""
        return int(self.workers or os.cpu_count() or 1)

    def replace(self, **changes) -> SandboxSettings:
        """A copy with ``changes`` (keys that are None are ignored: "not given")."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def coerce(cls, value) -> SandboxSettings:
        """``value`` as settings: a ``SandboxSettings``, a dict of fields, a JSON string or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise TypeError(f"sandbox settings must be SandboxSettings, a dict or a JSON string, got {type(value)}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown sandbox settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**value)


DEFAULT_SETTINGS = SandboxSettings()
