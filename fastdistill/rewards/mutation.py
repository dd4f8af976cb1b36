"""Sandboxed mutation scores, their cache, and the batch scorer every caller goes through.

Speed: pytest is imported and configured once per sandbox worker, and a worker serves many
(code, tests) pairs. Per pair a zygote collects the tests once; each mutant then runs in a child
forked from it that swaps the mutant in (fresh module object, test module re-executed against it),
runs the already-collected items, stops at its first failing test and has its own wall-clock
timeout and CPU budget (multiples of the original run's time). :func:`score_batch` runs a whole
batch of requests in one sandbox call; :func:`mutation_scores` and :func:`mutation_score` are thin
wrappers over it. Results are cached by a content hash of (code, tests, parameters) so a repeated
pair is never run twice. The mutants themselves come from :mod:`fastdistill.rewards.mutants`.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from fastdistill.rewards.mutants import (  # noqa: F401 - re-exported: the public names lived here
    OPERATORS,
    Mutant,
    _memoised_mutants,
    _mutants_of,
    generate_mutants,
)
from fastdistill.rewards.protocol import Gate, Job, MutationRequest, PairResult, PairSpec, TestRequest
from fastdistill.rewards.sandbox import TestRun, _to_test_run, execute_pairs
from fastdistill.rewards.settings import SandboxSettings

logger = logging.getLogger(__name__)


@dataclass
class MutantOutcome:
    """How one mutant fared: ``killed`` (includes timeouts, see ``timed_out``)."""

    operator: str
    line: int
    description: str
    killed: bool
    timed_out: bool = False


@dataclass
class MutationResult:
    """Result of :func:`mutation_score`. ``kill_rate = killed / total`` (timeouts count as killed).

    ``baseline_ok`` is False when the tests do not pass on the original code; the score is then 0
    and ``reason`` says why. ``baseline_run`` holds that run's per-test outcomes.
    """

    total: int = 0
    killed: int = 0
    survived: int = 0
    timed_out: int = 0
    kill_rate: float = 0.0
    mutants: list[MutantOutcome] = field(default_factory=list)
    baseline_ok: bool = False
    baseline_passed: int = 0
    baseline_duration_s: float = 0.0
    duration_s: float = 0.0
    reason: str = ""
    cached: bool = False
    baseline_run: TestRun | None = None
    """The run of the tests on the original code, as :func:`~fastdistill.rewards.sandbox.run_tests`
    reports a run (None when nothing ran: the code or the tests do not parse)."""


class _ResultCache:
    """Thread-safe LRU of finished results by content key; a hit is returned as a copy marked ``cached``."""

    def __init__(self, size: int):
        self.size, self._lock, self._items = size, threading.Lock(), OrderedDict()

    def get(self, key: str) -> MutationResult | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
        return _cached_copy(hit)

    def put(self, key: str, result: MutationResult) -> None:
        """Keep ``result`` unless a timeout shaped it (a rerun may measure differently)."""
        if result.cached or "timed out" in result.reason:
            return
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _ResultCache(4096)


def clear_cache() -> None:
    """Forget every cached mutation result (and the memoised mutants)."""
    _CACHE.clear()
    _memoised_mutants.cache_clear()


def _mutants_key(max_mutants):
    """The cache-key part for a request's ``max_mutants`` (a cap, or explicit mutants by source)."""
    if isinstance(max_mutants, (list, tuple)):
        return ["explicit", [m.source for m in max_mutants]]
    return max_mutants


def _cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def strip_bom(source):
    """``source`` without a leading UTF-8 byte-order mark (U+FEFF), which ``ast.parse`` refuses on a str.

    A file saved with a BOM runs under pytest (Python decodes files as utf-8-sig), so it must also
    parse for mutation; anything that is not a str is returned unchanged.
    """
    return source[1:] if isinstance(source, str) and source.startswith("\ufeff") else source


class _FromSettings:
    """Default of a keyword whose value comes from the call's :class:`SandboxSettings`."""

    def __repr__(self):
        return "<from settings>"


FROM_SETTINGS = _FromSettings()


def _settings(settings, **explicit) -> SandboxSettings:
    """``settings`` (default: :data:`DEFAULT_SETTINGS`) with the keywords given explicitly applied."""
    base = SandboxSettings.coerce(settings)
    changes = {k: v for k, v in explicit.items() if v is not FROM_SETTINGS}
    return replace(base, **changes) if changes else base


def mutation_score(code: str, tests: str, *, module_name: str = "solution", max_mutants=FROM_SETTINGS,
                   seed=FROM_SETTINGS, timeout_s=FROM_SETTINGS, memory_mb=FROM_SETTINGS,
                   baseline_timeout_s=FROM_SETTINGS, mutant_timeout_factor=FROM_SETTINGS,
                   mutant_timeout_min_s=FROM_SETTINGS, mutant_cpu_min_s=FROM_SETTINGS, use_cache: bool = True,
                   n_workers=FROM_SETTINGS, keep_warm=FROM_SETTINGS,
                   settings: SandboxSettings | dict | None = None) -> MutationResult:
    """Mutation score of the pytest file ``tests`` against ``code``, run in the sandbox.

    The tests first run on the original code; if any fails (or none is collected) the result has
    ``kill_rate == 0`` and a ``reason``. Otherwise every mutant from :func:`generate_mutants` runs
    in a child forked from a zygote that collected the tests once (the child swaps the mutant in),
    stopping at the first failing test; a mutant is killed when a test fails or errors, the module
    (or the test module against it) fails to import, or it times out: after
    ``max(mutant_timeout_min_s, mutant_timeout_factor * baseline time)`` of wall clock, or after
    ``max(mutant_cpu_min_s, mutant_timeout_factor * baseline time)`` of CPU time (hot infinite
    loops). ``timeout_s`` (``settings.pair_timeout_s``) bounds the whole call: mutants not reached
    in time count as survived. Every keyword not given comes from ``settings`` (see
    :class:`~fastdistill.rewards.settings.SandboxSettings` for the defaults). The mutants are
    spread over the warm workers, so a single call uses every core.
    Never raises for bad input; raises
    :class:`~fastdistill.rewards.sandbox.SandboxUnavailableError` when the sandbox cannot run at all.
    """
    return mutation_scores([code], [tests], n_workers=n_workers, module_name=module_name, max_mutants=max_mutants,
                           seed=seed, timeout_s=timeout_s, memory_mb=memory_mb, baseline_timeout_s=baseline_timeout_s,
                           mutant_timeout_factor=mutant_timeout_factor, mutant_timeout_min_s=mutant_timeout_min_s,
                           mutant_cpu_min_s=mutant_cpu_min_s, use_cache=use_cache, keep_warm=keep_warm,
                           settings=settings)[0]


def _cached_copy(result: MutationResult) -> MutationResult:
    clone = copy.copy(result)
    clone.cached = True
    return clone


def _prepare(code, tests, *, max_mutants, seed):
    """The mutants of one pair, or an early :class:`MutationResult` when the code or tests do not parse."""
    try:
        mutants = _mutants_of(code, max_mutants, seed)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return None, MutationResult(reason=f"code under test does not parse: {exc}")
    try:
        ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return None, MutationResult(total=len(mutants), survived=len(mutants), reason=f"tests do not parse: {exc}")
    return mutants, None


def _baseline_run(raw, baseline) -> TestRun:
    """The baseline job (job 0) of a pair as a one-repeat :class:`TestRun`."""
    if baseline is None:
        return _to_test_run(replace(raw, jobs=[], completed=False), 1)
    return _to_test_run(replace(raw, jobs=[replace(baseline, i=0)], completed=True, reason="", timed_out=False,
                                duration_s=baseline.duration_s), 1)


def _finish(mutants, raw: PairResult) -> MutationResult:
    result = MutationResult(total=len(mutants), duration_s=raw.duration_s)
    by_index = {job.i: job for job in raw.jobs}
    baseline = by_index.get(0)
    result.baseline_run = _baseline_run(raw, baseline)
    if baseline is None:
        result.survived = len(mutants)
        result.reason = f"tests did not finish on the original code: {raw.reason}"
        return result
    outcomes = [t[1] for t in baseline.tests]
    result.baseline_passed = outcomes.count("passed")
    result.baseline_duration_s = baseline.duration_s
    problems = []
    if baseline.status != "ok":
        problems.append({"timeout": "timed out", "memory": "killed for exceeding the sandbox memory budget"}.get(
            baseline.status, f"the test process ended early ({baseline.exit or 'no final report'})"))
    if baseline.collect_errors:
        problems.append("collection/import error: " + baseline.collect_errors[0][1][-300:])
    bad = [t for t in baseline.tests if t[1] in ("failed", "error")]
    if bad:
        problems.append(f"{len(bad)} test(s) fail on the original code, first: {bad[0][0]}")
    if not outcomes.count("passed") and not problems:
        problems.append("no test passed on the original code (empty or all skipped)")
    if problems:
        result.survived = len(mutants)
        result.reason = "score 0: " + "; ".join(problems)
        return result
    result.baseline_ok = True
    for index, mutant in enumerate(mutants, start=1):
        job = by_index.get(index)
        if job is None or job.status == "skipped":  # not reached, or a paired rewrite whose original survived
            outcome = MutantOutcome(mutant.operator, mutant.line, mutant.description, killed=False)
        else:
            timed_out = job.status == "timeout"  # the verdict is the worker's (one rule, in _child._killed)
            outcome = MutantOutcome(mutant.operator, mutant.line, mutant.description, killed=bool(job.killed),
                                    timed_out=timed_out)
        result.mutants.append(outcome)
    result.killed = sum(m.killed for m in result.mutants)
    result.timed_out = sum(m.timed_out for m in result.mutants)
    result.survived = result.total - result.killed
    result.kill_rate = result.killed / result.total if result.total else 0.0
    missing = result.total - (len(by_index) - 1)
    if not result.total:
        result.reason = "no mutants could be generated from the code"
    elif missing > 0:
        result.reason = (f"{raw.reason or 'run stopped early'}; {missing} mutant(s) not evaluated, "
                         "counted as survived")
    else:
        result.reason = f"ok: {result.killed}/{result.total} mutants killed"
    return result


def mutation_scores(codes: list[str], tests: list[str], *, n_workers=FROM_SETTINGS, module_name: str = "solution",
                    max_mutants=FROM_SETTINGS, seed=FROM_SETTINGS, timeout_s=FROM_SETTINGS, memory_mb=FROM_SETTINGS,
                    baseline_timeout_s=FROM_SETTINGS, mutant_timeout_factor=FROM_SETTINGS,
                    mutant_timeout_min_s=FROM_SETTINGS, mutant_cpu_min_s=FROM_SETTINGS,
                    use_cache: bool = True, keep_warm=FROM_SETTINGS,
                    settings: SandboxSettings | dict | None = None) -> list[MutationResult]:
    """Score many (code, tests) pairs; parameters as in :func:`mutation_score`.

    A thin wrapper over :func:`score_batch`: duplicate pairs in the batch run once and cached pairs
    not at all. The rest are spread over ``n_workers`` sandbox workers (default: one per core);
    each worker pays pytest's start-up once and serves pairs one after another (largest first),
    each pair isolated from the next; with fewer pairs than workers a pair's mutants are split.
    Workers stay warm for the next call unless ``keep_warm=False`` (see
    :func:`fastdistill.rewards.sandbox.execute_pairs`).
    """
    if len(codes) != len(tests):
        raise ValueError("codes and tests must have the same length")
    s = _settings(settings, workers=n_workers, max_mutants=max_mutants, seed=seed, pair_timeout_s=timeout_s,
                  memory_mb=memory_mb, baseline_timeout_s=baseline_timeout_s,
                  mutant_timeout_factor=mutant_timeout_factor, mutant_timeout_min_s=mutant_timeout_min_s,
                  mutant_cpu_min_s=mutant_cpu_min_s, keep_warm=keep_warm)
    return score_batch([MutationRequest(c, t, s.max_mutants) for c, t in zip(codes, tests)], module_name=module_name,
                       use_cache=use_cache, settings=s)[0]


_MIN_MUTANTS_PER_SHARD = 4  # a shard repeats its pair's collection and baseline (~20-40 ms): worth it from ~4 mutants


def _shard_specs(specs: list[PairSpec], n_workers: int) -> tuple[list[PairSpec], list[tuple[int, list[int]]]]:
    """Split pairs into shards when there are more workers than pairs, so every worker has work.

    A shard of a pair gets every baseline job (they set the mutants' budgets and gate them), a
    share of the mutants (round robin; a paired rewrite goes where the mutant it rewrites went) and,
    in the first shard, the repeats. Returns the specs to run and, per run spec, ``(pair index,
    local job index -> pair job index)``. With as many pairs as workers nothing is split.
    """
    shards_of = [1] * len(specs)
    if 0 < len(specs) < n_workers:
        per_pair = n_workers // len(specs)
        for k, spec in enumerate(specs):
            n_mut = sum(1 for job in spec.jobs if job.stop_first and job.needs_killed is None)
            shards_of[k] = max(1, min(per_pair, n_mut // _MIN_MUTANTS_PER_SHARD))
    run_specs, shards = [], []
    for k, spec in enumerate(specs):
        n = shards_of[k]
        if n == 1:
            run_specs.append(spec)
            shards.append((k, list(range(len(spec.jobs)))))
            continue
        owner, turn = {}, 0
        for i, job in enumerate(spec.jobs):
            if job.base:
                owner[i] = None  # every shard
            elif job.needs_killed is not None:
                owner[i] = owner[job.needs_killed]
            elif job.stop_first:
                owner[i], turn = turn % n, turn + 1
            else:
                owner[i] = 0  # repeats stay together
        for shard in range(n):
            members = [i for i, o in owner.items() if o is None or o == shard]
            local = {i: pos for pos, i in enumerate(members)}
            jobs = []
            for i in members:
                job = spec.jobs[i]
                if job.needs_killed is not None:
                    job = replace(job, needs_killed=local[job.needs_killed])
                jobs.append(job)
            run_specs.append(replace(spec, jobs=jobs))
            shards.append((k, members))
    return run_specs, shards


def _merge_shards(raws: list[PairResult], shards: list[tuple[int, list[int]]], n_pairs: int) -> list[PairResult]:
    """One raw result per pair from its shards' results (job indices mapped back; a baseline from the
    pair's first shard; completed only if every shard completed)."""
    merged: list = [None] * n_pairs
    for raw, (k, members) in zip(raws, shards):
        jobs = [replace(job, i=members[job.i]) for job in raw.jobs]
        if merged[k] is None:
            merged[k] = replace(raw, jobs=jobs)
            continue
        have = {job.i for job in merged[k].jobs}
        out = merged[k]
        out.jobs = sorted(out.jobs + [job for job in jobs if job.i not in have], key=lambda j: j.i)
        out.completed = out.completed and raw.completed
        out.timed_out = out.timed_out or raw.timed_out
        out.duration_s = max(out.duration_s, raw.duration_s)
        out.output = out.output + raw.output
        out.reason = "; ".join(r for r in (out.reason, raw.reason) if r)
        out.exit = out.exit or raw.exit
        out.returncode = out.returncode if out.returncode is not None else raw.returncode
    return merged


def score_batch(mutation_requests: list[tuple], test_requests: list[tuple] = (), *, n_workers=FROM_SETTINGS,
                module_name: str = "solution", seed=FROM_SETTINGS, timeout_s=FROM_SETTINGS, memory_mb=FROM_SETTINGS,
                baseline_timeout_s=FROM_SETTINGS, mutant_timeout_factor=FROM_SETTINGS,
                mutant_timeout_min_s=FROM_SETTINGS, mutant_cpu_min_s=FROM_SETTINGS, test_timeout_s=FROM_SETTINGS,
                use_cache: bool = True, keep_warm=FROM_SETTINGS,
                settings: SandboxSettings | dict | None = None) -> tuple[list, list]:
    """Mutation scores and repeated test runs for a whole batch in one sandbox call, one pair per test file.

    ``mutation_requests``: :class:`~fastdistill.rewards.protocol.MutationRequest` s (or plain
    ``(code, tests, max_mutants, needs)`` tuples), scored exactly as
    :func:`mutation_scores` scores ``(code, tests)`` with that ``max_mutants`` (and sharing its
    cache), or, when ``max_mutants`` is a sequence of :class:`Mutant`, against exactly those
    mutants, in that order (robustness pairs each sampled mutant with its rewrite); ``needs`` is
    ``None`` or the index of another request with the same ``tests`` that must pass on its code
    first; when it does not, this request is not run and its result is ``None``
    (robustness: a rewrite of the CUT only matters when the tests pass on the CUT itself).
    ``test_requests``: :class:`~fastdistill.rewards.protocol.TestRequest` s (``(code, tests, repeats)``),
    answered with a
    :class:`~fastdistill.rewards.sandbox.TestRun` as :func:`~fastdistill.rewards.sandbox.run_tests`
    (budget ``test_timeout_s``) would; when a mutation request of the same pair runs, the repeats
    also need the tests to pass on that run first (a failure there makes the run count as failed).

    Everything that uses one test file runs as one pair: pytest collects the tests once and every
    CUT version (original, rewrites), mutant and repeat is a job forked from that collection; each
    version has its own baseline, which sets its mutants' time budgets. Mutants shared by several
    requests of one CUT (different ``max_mutants``) run once. Returns ``(mutation_results, test_runs)``.
    """
    s = _settings(settings, workers=n_workers, seed=seed, pair_timeout_s=timeout_s, memory_mb=memory_mb,
                  baseline_timeout_s=baseline_timeout_s, mutant_timeout_factor=mutant_timeout_factor,
                  mutant_timeout_min_s=mutant_timeout_min_s, mutant_cpu_min_s=mutant_cpu_min_s,
                  test_timeout_s=test_timeout_s, keep_warm=keep_warm)
    n_workers, seed, timeout_s, memory_mb = s.n_workers, s.seed, s.pair_timeout_s, s.memory_mb
    baseline_timeout_s, test_timeout_s, keep_warm = s.baseline_timeout_s, s.test_timeout_s, s.keep_warm
    factor, min_s, cpu_min_s = s.mutant_timeout_factor, s.mutant_timeout_min_s, s.mutant_cpu_min_s
    mutation_requests = [MutationRequest(strip_bom(c), strip_bom(t), *rest) for c, t, *rest in mutation_requests]
    test_requests = [TestRequest(strip_bom(c), strip_bom(t), *rest) for c, t, *rest in test_requests]
    m_results: list = [None] * len(mutation_requests)
    keys = [_cache_key("v2", c, t, module_name, _mutants_key(mm), seed, memory_mb, factor, min_s, cpu_min_s)
            for c, t, mm, _ in mutation_requests]
    # 1. cache hits, unparseable input, dependencies that are already decided
    first: dict[str, int] = {}
    pending: dict[int, list] = {}  # request index -> mutants (first request of each key only)
    needs_of: dict[int, int | None] = {}
    for i, (code, tests, mm, needs) in enumerate(mutation_requests):
        if keys[i] in first:
            j = first[keys[i]]
            if needs is None and j in needs_of:
                needs_of[j] = None  # needed unconditionally by one of its duplicates
            continue
        first[keys[i]] = i
        hit = _CACHE.get(keys[i]) if use_cache else None
        if hit is not None:
            m_results[i] = hit
            continue
        mutants, early = _prepare(code, tests, max_mutants=mm, seed=seed)
        if early is not None:
            m_results[i] = early
            continue
        pending[i], needs_of[i] = mutants, needs
    for i in list(pending):
        needs = needs_of[i]
        if needs is None:
            continue
        dep = first.get(keys[needs], needs)
        if mutation_requests[dep][1] != mutation_requests[i][1]:
            needs_of[i] = None  # a different test file: cannot be gated inside one pair, run it anyway
        elif dep not in pending:  # decided already (cache / unparseable): run only if it passed there
            needs_of[i] = None
            if not (m_results[dep] is not None and m_results[dep].baseline_ok):
                del pending[i]
        else:
            needs_of[i] = dep
    # 2. one spec per (test file, CUT) with one job group per version of that CUT (itself, its rewrites)
    specs, plans = [], {}  # (tests, root code) -> plan
    gate = Gate(factor=factor, min_s=min_s, max_s=max(min_s, timeout_s), cpu_min_s=min(cpu_min_s, min_s))
    per_job = max(0.5, float(test_timeout_s) - 0.5)

    def root_of(i):
        while needs_of.get(i) is not None:
            i = needs_of[i]
        return mutation_requests[i][0]

    def plan_for(tests, root):
        plan = plans.get((tests, root))
        if plan is None:
            plan = plans[(tests, root)] = {"code": root, "groups": {}, "jobs": [], "n_mut": 0, "n_test": 0}
        return plan

    def group_of(plan, code):
        return plan["groups"].setdefault(code, {"index": len(plan["groups"]), "base": None, "mutants": {},
                                                "pairs": {}, "deps": [], "unconditional": False, "repeats": {}})

    plan_of = {}
    for i, mutants in pending.items():
        code, tests = mutation_requests[i][0], mutation_requests[i][1]
        plan = plan_of[i] = plan_for(tests, root_of(i))
        group = group_of(plan, code)
        group["base"] = True
        for m in mutants:
            group["mutants"].setdefault(m.source, None)
            if m.pairs_with is not None:
                group["pairs"][m.source] = m.pairs_with
        if needs_of[i] is not None:
            group["deps"].append(group_of(plan, mutation_requests[needs_of[i]][0])["index"])
        else:
            group["unconditional"] = True
    for k, (code, tests, repeats) in enumerate(test_requests):
        group = group_of(plan_for(tests, code), code)
        group["repeats"].setdefault(int(repeats), []).append(k)
    for (tests, _), plan in plans.items():
        jobs = plan["jobs"]
        # versions that depend on another come after it, so its baseline has run when they are reached
        groups = sorted(plan["groups"].items(), key=lambda kv: bool(kv[1]["deps"]) and not kv[1]["unconditional"])
        for code, group in groups:
            g = group["index"]
            deps = [] if group["unconditional"] else sorted(set(group["deps"]))
            if group["base"]:
                plan["n_mut"] += 1
                group["base"] = len(jobs)
                jobs.append(Job(source=code, timeout_s=baseline_timeout_s, group=g, base=True, needs=deps))
                root = plan["groups"][plan["code"]]
                for source in group["mutants"]:
                    group["mutants"][source] = len(jobs)
                    original = root["mutants"].get(group["pairs"].get(source)) if group is not root else None
                    # a paired rewrite (original not None): only worth running if its original was killed
                    jobs.append(Job(source=source, stop_first=True, timeout_s=None, group=g, base=False,
                                    needs=[g, *deps], needs_killed=original))
            else:
                group["base"] = None
            for repeats in group["repeats"]:
                plan["n_test"] += 1
                indices = []
                for _ in range(repeats):
                    indices.append(len(jobs))
                    jobs.append(Job(source=code, timeout_s=per_job, group=g, base=False,
                                    needs=[g, *deps] if group["base"] is not None else []))
                group["repeats"][repeats] = (indices, group["repeats"][repeats])
        plan["spec"] = len(specs)
        specs.append(PairSpec(code=plan["code"], tests=tests, module_name=module_name, write_module=False,
                              jobs=jobs, gate=gate, timeout_s=timeout_s * plan["n_mut"]
                              + (float(test_timeout_s) if plan["n_test"] else 0.0)))
    run_specs, shards = _shard_specs(specs, n_workers)
    raws = _merge_shards(execute_pairs(run_specs, memory_mb=memory_mb, n_workers=n_workers, keep_warm=keep_warm,
                                       nproc=s.max_processes),
                         shards, len(specs)) if specs else []
    # 3. split each pair's jobs back into the requests' results
    t_results: list = [None] * len(test_requests)

    def sub_raw(raw, indices):
        by_index = {job.i: job for job in raw.jobs}
        return replace(raw, jobs=[replace(by_index[j], i=n) for n, j in enumerate(indices) if j in by_index])

    for plan in plans.values():
        raw = raws[plan["spec"]]
        for group in plan["groups"].values():
            for repeats, (indices, owners) in group["repeats"].items():
                part = sub_raw(raw, indices)
                if group["base"] is not None and raw.completed and len(part.jobs) < repeats:
                    part.reason = "tests failed on their first run; repeats not run"
                run = _to_test_run(part, repeats)
                for k in owners:
                    t_results[k] = run
    for i, mutants in pending.items():
        plan = plan_of[i]
        group = plan["groups"][mutation_requests[i][0]]
        raw = raws[plan["spec"]]
        ran = {job.i for job in raw.jobs}
        if group["base"] not in ran and needs_of[i] is not None and raw.completed:
            continue  # what it needs failed, so it was not run: result None
        result = _finish(mutants, sub_raw(raw, [group["base"], *(group["mutants"][m.source] for m in mutants)]))
        m_results[i] = result
        if use_cache:
            _CACHE.put(keys[i], result)
    return [m_results[first[keys[i]]] for i in range(len(mutation_requests))], t_results
