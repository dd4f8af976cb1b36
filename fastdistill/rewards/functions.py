"""TRL reward functions that score generated pytest files by running them.

All follow TRL's signature ``f(prompts, completions, **kwargs) -> list[float]``; the code under
test comes from a dataset column passed as a keyword list (``code`` by default). Completions may
be strings or conversational message lists. Output without a parseable test file scores 0.0;
the functions never raise because of what a model generated. A sandbox that cannot run at all
raises :class:`~fastdistill.rewards.sandbox.SandboxUnavailableError` (training on all-zero
rewards from a dead sandbox would be worse than stopping).
"""

from __future__ import annotations

import ast
import logging
import math
import re
import statistics
from dataclasses import replace
from functools import lru_cache

from fastdistill.augment import robust_augment
from fastdistill.rewards.mutation import FROM_SETTINGS, Mutant, _mutants_of, score_batch, strip_bom
from fastdistill.rewards.sandbox import SandboxUnavailableError
from fastdistill.rewards.settings import SandboxSettings
from fastdistill.validation import Problems, check_weights

logger = logging.getLogger(__name__)

_CODE_START = re.compile(r"^(import |from |def |class |@|async def )")
_PYTHON_TAGS = ("", "python", "py", "python3")
_TAG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")

#: Completions longer than this many characters are not searched for a test file (``extract_test_code``
#: returns None). Far above any real generation (4,096 tokens are ~16,000 characters); it bounds the
#: parsing work one hostile sample can cost a GRPO step.
MAX_COMPLETION_CHARS = 500_000
#: Unfenced output is trimmed at the line of a syntax error at most this many times (each trim is one
#: parse of at most the text's length), so extraction is linear in the text's length.
MAX_TRIMS = 8


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        texts = [m.get("content") or "" for m in completion
                 if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return "\n".join(str(t) for t in texts)
    return ""


def _has_tests(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            return True
    return False


def _try_parse(source: str):
    """``(tree or None, syntax error or None)``; never raises."""
    try:
        return ast.parse(source), None
    except SyntaxError as err:
        return None, err
    except (ValueError, RecursionError, MemoryError, SystemError) as err:  # NUL bytes, too deep, ...
        return None, err


def _parse(source: str):
    tree, _ = _try_parse(source)
    return tree if tree is not None and _has_tests(tree) else None


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(tag, body)`` of every Markdown code fence, in one left-to-right pass (linear time).

    A fence opens at three backticks followed by an optional tag and the rest of that line; its
    body runs to the next three backticks or to the end of the text (an unclosed last fence).
    """
    blocks, pos = [], 0
    while True:
        start = text.find("```", pos)
        if start < 0:
            return blocks
        newline = text.find("\n", start + 3)
        if newline < 0:
            return blocks
        tag = _TAG.match(text, start + 3, newline).group(1)
        end = text.find("```", newline + 1)
        blocks.append((tag, text[newline + 1:] if end < 0 else text[newline + 1:end]))
        if end < 0:
            return blocks
        pos = end + 3


def _trim_to_code(lines: list[str], start: int) -> str | None:
    """The longest code from ``lines[start:]`` that parses and has a test, cutting at syntax errors.

    Each attempt parses once; a failure cuts the text just before the line the error points at (or
    at least one line), at most :data:`MAX_TRIMS` times, so the work is linear in the text's length.
    """
    end = len(lines)
    while end > start and not lines[end - 1].strip():
        end -= 1
    for _ in range(MAX_TRIMS):
        if end <= start:
            return None
        candidate = "\n".join(lines[start:end]) + "\n"
        tree, err = _try_parse(candidate)
        if tree is not None:
            return candidate if _has_tests(tree) else None
        line = getattr(err, "lineno", None)
        new_end = start + line - 1 if isinstance(line, int) and line >= 1 else end - 1
        end = min(new_end, end - 1)
        while end > start and not lines[end - 1].strip():
            end -= 1
    return None


def extract_test_code(completion) -> str | None:
    """Pull a pytest file out of a completion (string or chat messages); ``None`` if there is none.

    Tries, in order: fenced code blocks (python/py/untagged; the first with a test function, or
    all test-bearing blocks joined), the whole text, then the text from its first line that looks
    like code, cut before the line of each syntax error (trailing chat) until it parses. A leading
    byte-order mark is ignored. Linear time: the text is scanned once for fences, and at most
    ``MAX_TRIMS + 3`` parses of at most its length are made; completions longer than
    :data:`MAX_COMPLETION_CHARS` characters give None.
    """
    text = _completion_text(completion)
    if len(text) > MAX_COMPLETION_CHARS:
        logger.debug("extract_test_code: completion of %d characters is over the %d cap", len(text),
                     MAX_COMPLETION_CHARS)
        return None
    text = strip_bom(text)
    if not text.strip():
        return None
    blocks = [strip_bom(body) for tag, body in _fenced_blocks(text) if tag.lower() in _PYTHON_TAGS]
    good = [b for b in blocks if _parse(b) is not None]
    if good:
        joined = "\n\n".join(good)
        return joined if len(good) > 1 and _parse(joined) is not None else good[0]
    if _parse(text) is not None:
        return text
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None:
        return None
    return _trim_to_code(lines, start)


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        raise ValueError(f"reward needs the dataset column {name!r} (passed by TRL as a keyword argument)")
    if isinstance(values, str):
        values = [values] * n
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return list(values)


@lru_cache(maxsize=1024)
def _augmented(code: str, seed: int, flip_docstrings: float = 0.5) -> str:
    """:func:`robust_augment`, memoised (every generation of a prompt shares its CUT); raises like it."""
    return robust_augment(code, seed=seed, flip_docstrings=flip_docstrings)


class RewardError(RuntimeError):
    """A reward function could not score any row of a batch (the cause is chained). Raised rather
    than returning zeros, which would train the policy on a signal that was never measured."""


class _Reward:
    """Base: extraction, column handling and error containment.

    Components that run in the sandbox also describe their work as a *plan* (``_plan``: mutation
    and test-run requests for :func:`fastdistill.rewards.mutation.score_batch` plus a function that
    turns the results into values), so :class:`CompositeReward` can run every component's work for
    a batch in one sandbox call.
    """

    __name__ = "reward"

    def __init__(self, code_column: str = "code", module_name: str = "solution", n_workers: int | None = None,
                 max_mutants=FROM_SETTINGS, timeout_s: float | None = None, memory_mb: int | None = None,
                 keep_warm: bool | None = None, sandbox: SandboxSettings | dict | str | None = None):
        p = Problems(type(self).__name__)
        p.type(code_column, "code_column", str)
        p.type(module_name, "module_name", str)
        p.number(n_workers, "n_workers", minimum=1, integer=True, optional=True)
        if max_mutants is not FROM_SETTINGS:
            p.number(max_mutants, "max_mutants", minimum=1, integer=True, optional=True)
        p.number(timeout_s, "timeout_s", minimum=0.0, exclusive_minimum=True, optional=True)
        p.number(memory_mb, "memory_mb", minimum=1, integer=True, optional=True)
        p.raise_if_any()
        self.code_column = code_column
        self.module_name = module_name
        # every sandbox knob comes from one SandboxSettings; the keywords override single fields
        self.sandbox = SandboxSettings.coerce(sandbox).replace(workers=n_workers, pair_timeout_s=timeout_s,
                                                               memory_mb=memory_mb, keep_warm=keep_warm)
        self.max_mutants = self.sandbox.max_mutants if max_mutants is FROM_SETTINGS else max_mutants

    # read-only views of the settings (names of the keyword arguments)
    n_workers = property(lambda self: self.sandbox.n_workers)
    timeout_s = property(lambda self: self.sandbox.pair_timeout_s)
    memory_mb = property(lambda self: self.sandbox.memory_mb)
    keep_warm = property(lambda self: self.sandbox.keep_warm)  # workers stay warm between calls (GRPO steps)

    def _pairs(self, completions, kwargs):
        codes = _column(kwargs, self.code_column, len(completions))
        tests = [extract_test_code(c) for c in completions]
        return codes, tests

    def _batch(self, mutation_requests, test_requests):
        """Run sandbox requests with this component's settings (see :func:`score_batch`)."""
        return score_batch(mutation_requests, test_requests, module_name=self.module_name, settings=self.sandbox)

    def score(self, codes, tests):
        """Values for ``(code, tests)`` pairs (``tests`` None: unparseable, scores 0): the component's plan, run."""
        m_req, t_req, finish = self._plan(codes, tests)
        return finish(*self._batch(m_req, t_req))

    def _bad_rows(self, codes) -> dict[int, str]:
        """Rows whose code under test cannot be scored at all (not a non-empty string): row -> reason."""
        bad = {}
        for i, code in enumerate(codes):
            if not isinstance(code, str):
                bad[i] = f"column {self.code_column!r} is {type(code).__name__}, not a string"
            elif not code.strip():
                bad[i] = f"column {self.code_column!r} is empty"
        return bad

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        """Rewards for a batch; a row whose dataset input is unusable gets ``None`` (TRL: "not applicable").

        Bad rows (code under test missing, not a string or empty) are counted in the log and in
        ``last_bad_rows`` (row -> reason) and never change the other rows' values: the rest of
        the batch is scored as if they were not there.
        """
        completions = completions or []
        codes, tests = self._pairs(completions, kwargs)  # a missing column is a ValueError: a setup error
        bad = self._bad_rows(codes)
        self.last_bad_rows = bad
        if bad:
            first = min(bad)
            logger.warning("%s: %d of %d rows cannot be scored and get None (row %d: %s)", self.__name__, len(bad),
                           len(codes), first, bad[first])
        rows = [i for i in range(len(codes)) if i not in bad]
        if not rows:
            return [None] * len(codes)
        try:
            values = self.score([codes[i] for i in rows], [tests[i] for i in rows])
        except (ValueError, SandboxUnavailableError):
            raise
        except Exception as err:  # noqa: BLE001 - isolate the row(s) that break scoring; never a silent 0
            logger.exception("%s failed on a batch of %d rows; scoring them one by one", self.__name__, len(rows))
            rows, values = self._score_one_by_one(codes, tests, rows, bad, err)
        out: list[float | None] = [None] * len(codes)
        for i, v in zip(rows, values):
            out[i] = float(v)
        if bad and getattr(self, "last_components", None):
            self.last_components = {name: _scatter(vals, rows, len(codes))
                                    for name, vals in self.last_components.items()}
        return out

    def _score_one_by_one(self, codes, tests, rows, bad, batch_error):
        """After a batch failed unexpectedly: score each row alone. A row that still fails gets
        ``None`` (TRL's "not applicable"), is counted in ``last_bad_rows`` and logged; if every row
        fails the reward cannot do its job and raises :class:`RewardError`."""
        kept, values, parts = [], [], {}
        for i in rows:
            try:
                value = self.score([codes[i]], [tests[i]])[0]
            except (ValueError, SandboxUnavailableError):
                raise
            except Exception as err:  # noqa: BLE001 - one row's failure must not change the others
                bad[i] = f"scoring raised {type(err).__name__}: {err}"
                continue
            kept.append(i)
            values.append(value)
            for name, vals in (getattr(self, "last_components", None) or {}).items():
                parts.setdefault(name, []).append(vals[0])
        if not kept:
            raise RewardError(f"{self.__name__}: no row of the batch could be scored "
                              f"(first: row {rows[0]}: {bad[rows[0]]})") from batch_error
        failed = sorted(set(rows) - set(kept))
        if failed:
            logger.warning("%s: %d of %d rows raised while scoring and get None (row %d: %s)", self.__name__,
                           len(failed), len(rows), failed[0], bad[failed[0]])
        if parts:
            self.last_components = parts
        return kept, values


def _scatter(values, rows, n):
    out = [None] * n
    for i, v in zip(rows, values):
        out[i] = v
    return out


class MutantKillReward(_Reward):
    """Fraction of mutants of the CUT killed by the generated tests (0 if they fail on the CUT)."""

    __name__ = "mutant_kill_reward"

    def _plan(self, codes, tests):
        idx = [i for i, t in enumerate(tests) if t is not None]
        requests = [(codes[i], tests[i], self.max_mutants, None) for i in idx]

        def finish(results, _runs):
            values = [0.0] * len(codes)
            for i, res in zip(idx, results):
                values[i] = res.kill_rate if res is not None else 0.0
            return values

        return requests, [], finish


class SpeedStabilityReward(_Reward):
    """Tests must pass on each of ``repeats`` runs; then faster and less variable scores higher.

    ``score = ref_s / (ref_s + mean_s) * 1 / (1 + cv)`` where ``mean_s`` is the mean per-run test
    time (pytest's setup+call+teardown, start-up excluded) and ``cv`` its coefficient of
    variation. Failing, erroring, timed-out or flaky (outcomes differ across repeats) tests score 0.
    ``ref_s`` is the runtime that scores 0.5: set it near the runtime of the tests being compared
    (the default, 5 ms, suits unit tests of small functions, ~1-10 ms per file); far above it every
    file scores ~1 and the reward no longer ranks them.
    """

    __name__ = "speed_stability_reward"

    def __init__(self, repeats: int = 3, ref_s: float = 0.005, **kwargs):
        super().__init__(**kwargs)
        p = Problems(type(self).__name__)
        p.number(repeats, "repeats", minimum=1, integer=True)
        p.number(ref_s, "ref_s", minimum=0.0, exclusive_minimum=True)
        p.raise_if_any()
        self.repeats = repeats
        self.ref_s = ref_s

    def _value(self, run):
        if not run.ok or run.flaky or len(run.repeat_durations_s) != self.repeats:
            return 0.0
        durations = run.repeat_durations_s
        mean = statistics.fmean(durations)
        cv = statistics.pstdev(durations) / mean if mean > 0 else 0.0
        return (self.ref_s / (self.ref_s + mean)) / (1.0 + cv)

    def _plan(self, codes, tests):
        idx = [i for i, t in enumerate(tests) if t is not None]

        def finish(_results, runs):
            values = [0.0] * len(codes)
            for i, run in zip(idx, runs):
                values[i] = self._value(run) if run is not None else 0.0
            return values

        return [], [(codes[i], tests[i], self.repeats) for i in idx], finish


@lru_cache(maxsize=1024)
def _paired_rewrites(code: str, seed: int, max_mutants: int | None,
                     flip_docstrings: float) -> tuple[tuple[int, Mutant], ...]:
    """``(j, rewrite of mutant j)`` for the seeded mutant sample of ``code``: the same
    :func:`robust_augment` applied to each mutant, so mutant j of the rewritten CUT makes the same
    change as mutant j of the original (mutants the rewrite cannot handle are left out)."""
    paired = []
    for j, mutant in enumerate(_mutants_of(code, max_mutants, 0)):
        try:
            source = robust_augment(mutant.source, seed=seed, flip_docstrings=flip_docstrings)
        except (SyntaxError, ValueError, RecursionError):
            continue
        paired.append((j, Mutant(mutant.operator, mutant.line, mutant.description, source, pairs_with=mutant.source)))
    return tuple(paired)


class RobustnessReward(_Reward):
    """Do the tests keep passing and keep killing when the CUT is rewritten by ``robust_augment``?

    The CUT's seeded sample of at most ``max_mutants`` mutants is run as usual; for each of
    ``n_variants`` seeded rewrites (local names renamed, comments inserted, and each docstring
    flipped with probability ``flip_docstrings``: by default every one, so a single rewrite
    changes everything a rewrite may change), the tests run on the rewritten CUT and on the same
    rewrite of each sampled mutant (a *paired* design: mutant j of the rewrite makes the same change
    as mutant j of the original). A rewrite scores 0 if the tests fail on it, else the fraction of
    the originally killed mutants whose rewrites are killed too; the reward is the mean over
    rewrites (0 when the tests fail on the original or kill nothing there). Tests that do not read
    the source score exactly 1 (no sampling noise between two independent samples); tests that
    depend on docstrings, local names or layout fail or stop killing on the rewrite. The original's
    sample is nested in the kill-rate component's (see :func:`generate_mutants`), so in the
    composite only the rewrites cost extra runs: ``n_variants * (1 + max_mutants)`` per completion.
    """

    __name__ = "robustness_reward"

    def __init__(self, n_variants: int = 1, max_mutants: int | None = 5, flip_docstrings: float = 1.0, **kwargs):
        super().__init__(max_mutants=max_mutants, **kwargs)
        p = Problems(type(self).__name__)
        p.number(n_variants, "n_variants", minimum=1, integer=True)
        p.number(flip_docstrings, "flip_docstrings", minimum=0.0, maximum=1.0)
        p.raise_if_any()
        self.n_variants = n_variants
        self.flip_docstrings = flip_docstrings

    def _plan(self, codes, tests):
        """Base runs and the rewrites' runs as one set of requests; a rewrite runs only if the base passes."""
        requests, owners = [], []  # owners[k] = (completion index, None for its base, or the rewrite's pairing)
        for i, (code, test) in enumerate(zip(codes, tests)):
            if test is None:
                continue
            base = len(requests)
            requests.append((code, test, self.max_mutants, None))
            owners.append((i, None))
            for seed in range(self.n_variants):
                try:
                    variant = _augmented(code, seed, self.flip_docstrings)
                    paired = _paired_rewrites(code, seed, self.max_mutants, self.flip_docstrings)
                except (SyntaxError, ValueError, RecursionError):
                    continue
                requests.append((variant, test, tuple(m for _, m in paired), base))
                owners.append((i, tuple(j for j, _ in paired)))

        def finish(results, _runs):
            base, per = {}, {}
            for (i, pairing), res in zip(owners, results):
                if pairing is None:
                    base[i] = res
            for (i, pairing), res in zip(owners, results):
                b = base[i]
                if pairing is None or b is None or not b.baseline_ok or b.killed <= 0:
                    continue
                killed = [b.mutants[j].killed for j in pairing]
                if res is None or not res.baseline_ok or not any(killed):
                    value = 0.0
                else:
                    kept = sum(1 for k, m in zip(killed, res.mutants) if k and m.killed)
                    value = kept / sum(killed)
                per.setdefault(i, []).append(value)
            return [statistics.fmean(per[i]) if i in per else 0.0 for i in range(len(codes))]

        return requests, [], finish


_COMPONENTS = {
    "mutant_kill": MutantKillReward,
    "speed_stability": SpeedStabilityReward,
    "robustness": RobustnessReward,
}

PRESETS: dict[str, dict[str, float]] = {
    # "mutant" branch: strongest tests; "speed" branch: fast, stable tests that still kill.
    "mutant": {"mutant_kill": 0.7, "robustness": 0.2, "speed_stability": 0.1},
    "speed": {"mutant_kill": 0.3, "robustness": 0.1, "speed_stability": 0.6},
}


class CompositeReward(_Reward):
    """Weighted sum of the component rewards; weights are normalised to sum to 1.

    After each call, ``last_components`` maps component name -> list of per-completion values
    (plus ``"composite"``) so a trainer can log kill rate, speed and robustness separately.
    """

    __name__ = "composite_reward"

    def __init__(self, weights: dict[str, float] | None = None, component_kwargs: dict | None = None,
                 fused: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fused = fused
        weights = dict(PRESETS["mutant"] if weights is None else weights)
        # every problem at once: unknown component (closest name), NaN / inf / negative weight, none > 0
        check_weights(weights, _COMPONENTS, "weights")
        if component_kwargs is not None:
            p = Problems("component_kwargs")
            p.keys(component_kwargs, _COMPONENTS, "")
            p.raise_if_any()
        total = sum(w for w in weights.values() if w > 0)
        self.weights = {k: w / total for k, w in weights.items() if w > 0}
        component_kwargs = component_kwargs or {}
        self.components = {name: _COMPONENTS[name](**{**kwargs, **component_kwargs.get(name, {})})
                           for name in self.weights}
        self.last_components: dict[str, list[float]] = {}

    def _fusable(self) -> bool:
        settings = {(c.module_name, replace(c.sandbox, max_mutants=None)) for c in self.components.values()}
        return self.fused and len(settings) == 1

    def _score_fused(self, codes, tests):
        """Every component's sandbox work for the batch in one :func:`score_batch` call."""
        m_all, t_all, parts = [], [], []
        for name, component in self.components.items():
            m_req, t_req, finish = component._plan(codes, tests)
            offset = len(m_all)
            m_all += [(c, t, mm, None if needs is None else needs + offset) for c, t, mm, needs in m_req]
            parts.append((name, finish, offset, len(m_req), len(t_all), len(t_req)))
            t_all += t_req
        # _fusable(): every component has the same sandbox settings, so any of them can run the batch
        m_res, t_res = next(iter(self.components.values()))._batch(m_all, t_all)
        return {name: [float(v) for v in finish(m_res[m0:m0 + mn], t_res[t0:t0 + tn])]
                for name, finish, m0, mn, t0, tn in parts}

    def score(self, codes, tests):
        if self._fusable():
            try:
                return self._combine(codes, self._score_fused(codes, tests))
            except SandboxUnavailableError:
                raise
            except Exception:  # noqa: BLE001 - fall back to running the components one by one
                logger.exception("fused reward scoring failed; scoring component by component")
        # a component that raises here propagates: _Reward.__call__ isolates the row(s) behind it
        values = {name: [float(v) for v in component.score(codes, tests)]
                  for name, component in self.components.items()}
        return self._combine(codes, values)

    def _combine(self, codes, values):
        combined = [sum(self.weights[n] * values[n][i] for n in values) for i in range(len(codes))]
        broken = [i for i, c in enumerate(combined) if not math.isfinite(c)]
        if broken:  # a component returned NaN/inf: that row cannot be scored (never a silent 0)
            i = broken[0]
            raise ArithmeticError("composite reward is not finite: "
                                  + ", ".join(f"{n}={values[n][i]!r}" for n in values))
        self.last_components = {**values, "composite": combined}
        return combined

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        """Score the batch; with TRL's ``log_metric`` keyword each component's batch mean is logged too."""
        self.last_components = {}
        rewards = super().__call__(prompts, completions, **kwargs)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for name, values in self.last_components.items():
                values = [v for v in values if v is not None]
                if name != "composite" and values:
                    log_metric(f"rewards/{name}", statistics.fmean(values))
        return rewards


def composite_reward(weights: dict[str, float] | None = None, *, preset: str | None = None,
                     **kwargs) -> CompositeReward:
    """Build a composite reward from ``weights`` (component -> weight) or a named ``preset``.

    Components: ``mutant_kill``, ``speed_stability``, ``robustness``. Presets (see ``PRESETS``):
    ``"mutant"`` and ``"speed"``, the two GRPO branches. Keyword arguments (``code_column``,
    ``max_mutants``, ``n_workers``, ``sandbox`` (a :class:`~fastdistill.rewards.SandboxSettings` or a
    dict of its fields), ...) go to every component.
    """
    if preset is not None:
        if weights is not None:
            raise ValueError("give weights or preset, not both")
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        weights = PRESETS[preset]
    reward = CompositeReward(weights=weights, **kwargs)
    if preset is not None:
        reward.__name__ = f"composite_reward_{preset}"
    return reward


composite_reward.preset = lambda name, **kwargs: composite_reward(preset=name, **kwargs)
make_composite_reward = composite_reward

mutant_kill_reward = MutantKillReward()
speed_stability_reward = SpeedStabilityReward()
robustness_reward = RobustnessReward()
