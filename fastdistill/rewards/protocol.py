"""The sandbox protocol: typed requests, pair specs, jobs and results, and their one wire form.

The parent side (:mod:`~fastdistill.rewards.sandbox`, :mod:`~fastdistill.rewards.mutation`) builds
these dataclasses; :func:`to_wire` turns one into the JSON-able dict the worker (``_child.py``, which
cannot import fastdistill and so speaks only the wire form) reads, and :func:`from_wire` turns a wire
dict back into the dataclass. This docstring is the one description of the wire schema.

Wire schema (JSON objects; ``?`` marks a key left out when it has its default):

* pair spec, parent -> worker, one length-prefixed JSON frame per pair (:class:`PairSpec`)::

    {"id": int, "code": str, "tests": str, "module_name": str, "write_module": bool,
     "timeout_s": float, "gate": gate | null, "jobs": [job, ...]}

  ``gate`` (:class:`Gate`): ``{"factor", "min_s", "max_s", "cpu_min_s"}``: a mutant's wall budget is
  ``min(max_s, max(min_s, factor * baseline wall))``, its CPU budget
  ``min(wall, max(cpu_min_s, factor * baseline CPU))``, and jobs that need a failed baseline are skipped.

* job (:class:`Job`)::

    {"source": str | null, "stop_first": bool, "timeout_s": float | null,
     "group"?: int, "base"?: bool, "needs"?: [int], "needs_killed"?: int}

  ``source`` null runs the code as written for the pair; ``stop_first`` marks a mutant (stop at the first
  failing test; the worker gives its verdict); ``timeout_s`` null takes the budget from the gate;
  ``base`` defaults to "job 0", ``needs`` to ``[]`` for job 0 and ``[0]`` for the others.

* job result, worker -> parent inside the pair result (:class:`JobResult`)::

    {"i": int, "status": "ok" | "timeout" | "crash" | "memory" | "skipped",
     "tests": [[nodeid, "passed" | "failed" | "error" | "skipped", duration_s, message], ...],
     "collect_errors": [[nodeid, message], ...], "duration_s": float, "exit": str,
     "recollected"?: bool, "cpu_s"?: float | null, "killed"?: bool}

  ``killed`` is present for mutants (``stop_first`` jobs) only: the verdict of the one rule
  (``_child._Server._killed``): a test failed or errored, collection/import failed, or the job timed
  out, crashed or was killed for exceeding the memory budget.

* pair result (:class:`PairResult`); the worker sends it as ``{"t": "pair", "id": int, ...}`` with
  ``jobs``, ``completed``, ``timed_out``, ``exit``, ``duration_s``, ``oom_kills`` and ``zygote``
  (``"fresh"``, ``"spare"`` or ``"warm"``); the parent adds ``output``, ``returncode`` and ``reason``::

    {"jobs": [job result, ...], "completed": bool, "timed_out": bool, "output": str,
     "returncode": int | null, "reason": str, "exit": str, "duration_s": float, "oom_kills": int,
     "zygote": str}

Every message line the worker or a zygote writes is ``\\n<nonce> <json>\\n`` (see ``_child._writer``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence, TypeVar, Union


class MutationRequest(NamedTuple):
    """One request of :func:`~fastdistill.rewards.mutation.score_batch`: score ``tests`` against ``code``.

    ``mutants``: a cap on the sampled mutants (``None``: all), or the exact mutants to run; ``needs``:
    ``None`` or the index of another request (same ``tests``) whose code the tests must pass first.
    A tuple, so ``(code, tests, mutants, needs)`` tuples are requests too.
    """

    code: str
    tests: str
    mutants: Union[int, None, Sequence[Any]] = None
    needs: int | None = None


class TestRequest(NamedTuple):
    """A repeated test run of :func:`~fastdistill.rewards.mutation.score_batch` (``(code, tests, repeats)``)."""

    __test__ = False

    code: str
    tests: str
    repeats: int = 1


@dataclass
class Gate:
    """How a pair's mutants are budgeted and gated by their baseline (see the module docstring)."""

    factor: float
    min_s: float
    max_s: float
    cpu_min_s: float


@dataclass
class Job:
    """One job of a pair: the original code, a repeat, a rewrite or a mutant (see the module docstring)."""

    source: str | None = None
    stop_first: bool = False
    timeout_s: float | None = None
    group: int | None = None
    base: bool | None = None
    needs: list[int] | None = None
    needs_killed: int | None = None


@dataclass
class PairSpec:
    """One (code, tests) pair and its jobs, as a sandbox worker serves it."""

    code: str
    tests: str
    jobs: list[Job]
    timeout_s: float
    module_name: str = "solution"
    write_module: bool = True
    gate: Gate | None = None
    id: int | None = None


@dataclass
class JobResult:
    """What one job did (see the module docstring); ``tests`` rows are ``[nodeid, outcome, duration_s, message]``."""

    i: int
    status: str
    tests: list = field(default_factory=list)
    collect_errors: list = field(default_factory=list)
    duration_s: float = 0.0
    exit: str = ""
    recollected: bool | None = None
    cpu_s: float | None = None
    killed: bool | None = None


@dataclass
class PairResult:
    """What a pair did: its finished jobs in order, and how the pair itself ended."""

    jobs: list[JobResult] = field(default_factory=list)
    completed: bool = False
    timed_out: bool = False
    output: str = ""
    returncode: int | None = None
    reason: str = ""
    exit: str = ""
    duration_s: float = 0.0
    oom_kills: int = 0
    zygote: str = ""

    @classmethod
    def failed(cls, reason: str) -> "PairResult":
        """A pair that did not run at all."""
        return cls(reason=reason)


_OPTIONAL = {Job: ("group", "base", "needs", "needs_killed"), JobResult: ("recollected", "cpu_s", "killed")}
_NESTED = {PairSpec: {"jobs": Job, "gate": Gate}, PairResult: {"jobs": JobResult}}

T = TypeVar("T")


def to_wire(obj) -> dict:
    """The wire (JSON-able) dict of a protocol dataclass; optional keys at their default are left out."""
    out = {}
    optional = _OPTIONAL.get(type(obj), ())
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in optional and value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = to_wire(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [to_wire(v) for v in value]
        out[f.name] = value
    return out


def from_wire(cls: type[T], data) -> T:
    """The ``cls`` dataclass of a wire dict (keys it does not know, such as a message's ``t``, are dropped);
    an instance of ``cls`` is returned as it is."""
    if isinstance(data, cls):
        return data
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    for name, inner in _NESTED.get(cls, {}).items():
        value = values.get(name)
        if isinstance(value, list):
            values[name] = [from_wire(inner, v) for v in value]
        elif value is not None:
            values[name] = from_wire(inner, value)
    return cls(**values)
