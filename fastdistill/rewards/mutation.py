"""AST mutation engine and a fast, sandboxed mutation score.

Speed: pytest is imported and configured once per sandbox worker, and a worker serves many
(code, tests) pairs. Per pair a zygote collects the tests once; each mutant then runs in a child
forked from it that swaps the mutant in (fresh module object, test module re-executed against it),
runs the already-collected items, stops at its first failing test and has its own wall-clock
timeout and CPU budget (multiples of the original run's time). Many pairs are scored in parallel
with :func:`mutation_scores`; results are cached by a content hash of (code, tests, parameters)
so a repeated pair is never run twice.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import logging
import os
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from fastdistill.rewards.sandbox import execute_pairs

logger = logging.getLogger(__name__)

_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
          ast.LShift: ast.RShift, ast.RShift: ast.LShift}
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_DELETABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise)

OPERATORS = ("arithmetic", "comparison", "boolean", "unary", "constant", "off_by_one", "return_value",
             "negate_condition", "delete_statement", "break_continue", "slice_index")


@dataclass
class Mutant:
    """One mutated version of the code: ``operator`` applied at ``line``; ``source`` is runnable.

    ``pairs_with`` (explicit mutants of a rewritten CUT, see :func:`score_batch`): the source of the
    original CUT's mutant this one rewrites; it then runs only if that mutant was killed, and is
    reported as not killed without running otherwise (robustness only looks at killed pairs).
    """

    operator: str
    line: int
    description: str
    source: str
    pairs_with: str | None = None


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
    and ``reason`` says why.
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


def _is_docstring(node, parent) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and parent.body and parent.body[0] is node)


def _candidates(tree: ast.AST) -> list[tuple[ast.AST, str, str, object]]:
    """Every (node, operator, description, payload) mutation point, in a deterministic order."""
    points = []
    docstring_values = set()
    in_function = set()
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                if _is_docstring(child, parent):
                    docstring_values.add(id(child.value))
                if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) or id(parent) in in_function:
                    in_function.add(id(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            points.append((node, "arithmetic", f"{type(node.op).__name__} -> {_ARITH[type(node.op)].__name__}", None))
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            points.append((node, "arithmetic", f"{type(node.op).__name__}= -> {_ARITH[type(node.op)].__name__}=", None))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _COMPARE:
                    points.append((node, "comparison", f"{type(op).__name__} -> {_COMPARE[type(op)].__name__}", i))
        elif isinstance(node, ast.BoolOp):
            points.append((node, "boolean", "and <-> or", None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
            points.append((node, "unary", f"drop {type(node.op).__name__}", None))
        elif isinstance(node, ast.Constant) and id(node) not in docstring_values:
            value = node.value
            if isinstance(value, bool):
                points.append((node, "constant", f"{value} -> {not value}", not value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                points.append((node, "off_by_one", f"{value} -> {value + 1}", value + 1))
                points.append((node, "off_by_one", f"{value} -> {value - 1}", value - 1))
                if value not in (0, 1):
                    points.append((node, "constant", f"{value} -> 0", 0))
            elif isinstance(value, str):
                points.append((node, "constant", "string -> " + ("'XX'" if value else "''"), "XX" if not value else ""))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            points.append((node, "return_value", "return value -> None", None))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            points.append((node, "negate_condition", "condition -> not condition", None))
        elif isinstance(node, ast.Break):
            points.append((node, "break_continue", "break -> continue", None))
        elif isinstance(node, ast.Continue):
            points.append((node, "break_continue", "continue -> break", None))
        elif isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                if getattr(node, bound) is not None:
                    points.append((node, "slice_index", f"slice {bound} + 1", bound))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and not isinstance(node.slice, (ast.Slice, ast.Constant, ast.Tuple)):
            points.append((node, "slice_index", "index + 1", None))
        if isinstance(node, _DELETABLE) and id(node) in in_function and not (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            points.append((node, "delete_statement", "statement -> pass", None))
    return points


def _apply(node: ast.AST, operator: str, payload) -> ast.AST | None:
    """Mutate ``node`` in place; return a node that replaces it in its parent, or None."""
    if operator == "arithmetic":
        node.op = _ARITH[type(node.op)]()
    elif operator == "comparison":
        node.ops[payload] = _COMPARE[type(node.ops[payload])]()
    elif operator == "boolean":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif operator == "unary":
        return node.operand
    elif operator in ("constant", "off_by_one"):
        node.value = payload
    elif operator == "return_value":
        node.value = ast.Constant(None)
    elif operator == "negate_condition":
        node.test = ast.UnaryOp(ast.Not(), node.test)
    elif operator == "break_continue":
        return ast.Continue() if isinstance(node, ast.Break) else ast.Break()
    elif operator == "slice_index":
        if payload is None:
            node.slice = ast.BinOp(node.slice, ast.Add(), ast.Constant(1))
        else:
            setattr(node, payload, ast.BinOp(getattr(node, payload), ast.Add(), ast.Constant(1)))
    elif operator == "delete_statement":
        return ast.Pass()
    return None


def _slots(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """``id(node) -> (parent, field, index in the field's list or None)`` for every node below ``tree``."""
    slots = {}
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        slots[id(child)] = (parent, name, i)
            elif isinstance(value, ast.AST):
                slots[id(value)] = (parent, name, None)
    return slots


def _mutated_source(tree, slots, node, operator, payload) -> str:
    """``ast.unparse`` of ``tree`` with one mutation applied, leaving ``tree`` as it was.

    The mutation is applied in place and undone afterwards (the node's fields, and its slot in its
    parent for replacing operators), instead of deep-copying the tree for every mutant.
    """
    saved = {name: list(value) if isinstance(value, list) else value for name, value in ast.iter_fields(node)}
    parent, field_name, index = slots[id(node)]
    replacement = _apply(node, operator, payload)
    if replacement is not None:  # (locations are not needed: only the unparsed source is kept)
        if index is None:
            setattr(parent, field_name, replacement)
        else:
            getattr(parent, field_name)[index] = replacement
    try:
        return ast.unparse(tree)
    finally:
        if replacement is not None:
            if index is None:
                setattr(parent, field_name, node)
            else:
                getattr(parent, field_name)[index] = node
        for name, value in saved.items():
            setattr(node, name, value)


def generate_mutants(code: str, *, max_mutants: int | None = None, seed: int = 0) -> list[Mutant]:
    """Return the distinct, compilable mutants of ``code`` (AST-based, deterministic for a seed).

    Operators: see :data:`OPERATORS`. With ``max_mutants`` a seeded random subset is kept, in the
    original order; samples are nested (for one seed, the subset kept under a smaller cap is part
    of the subset kept under a larger one), so requests with different caps share their runs.
    Raises ``SyntaxError`` if ``code`` does not parse.
    """
    tree = ast.parse(code)
    original = ast.unparse(tree)
    slots = _slots(tree)
    mutants, seen = [], {original}
    for node, operator, description, payload in _candidates(tree):
        try:
            source = _mutated_source(tree, slots, node, operator, payload)
            compile(source, "<mutant>", "exec")
        except (SyntaxError, ValueError, TypeError, RecursionError):
            continue
        if source in seen:
            continue
        seen.add(source)
        mutants.append(Mutant(operator=operator, line=getattr(node, "lineno", 0), description=description,
                              source=source))
    if max_mutants is not None and len(mutants) > max_mutants:
        order = list(range(len(mutants)))
        random.Random(seed).shuffle(order)  # a prefix of one seeded permutation: nested samples
        keep = sorted(order[:max_mutants])
        mutants = [mutants[i] for i in keep]
    return mutants


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


def mutation_score(code: str, tests: str, *, module_name: str = "solution", max_mutants: int | None = 40,
                   seed: int = 0, timeout_s: float = 60.0, memory_mb: int = 1024, baseline_timeout_s: float = 10.0,
                   mutant_timeout_factor: float = 3.0, mutant_timeout_min_s: float = 0.3,
                   mutant_cpu_min_s: float = 0.02, use_cache: bool = True) -> MutationResult:
    """Mutation score of the pytest file ``tests`` against ``code``, run in the sandbox.

    The tests first run on the original code; if any fails (or none is collected) the result has
    ``kill_rate == 0`` and a ``reason``. Otherwise every mutant from :func:`generate_mutants` runs
    in a child forked from a zygote that collected the tests once (the child swaps the mutant in),
    stopping at the first failing test; a mutant is killed when a test fails or errors, the module
    (or the test module against it) fails to import, or it times out: after
    ``max(mutant_timeout_min_s, mutant_timeout_factor * baseline time)`` of wall clock, or after
    ``max(mutant_cpu_min_s, mutant_timeout_factor * baseline time)`` of CPU time (hot infinite
    loops). ``timeout_s`` bounds the whole call: mutants not reached in time count as survived.
    Never raises for bad input; raises
    :class:`~fastdistill.rewards.sandbox.SandboxUnavailableError` when the sandbox cannot run at all.
    """
    return mutation_scores([code], [tests], n_workers=1, module_name=module_name, max_mutants=max_mutants, seed=seed,
                           timeout_s=timeout_s, memory_mb=memory_mb, baseline_timeout_s=baseline_timeout_s,
                           mutant_timeout_factor=mutant_timeout_factor, mutant_timeout_min_s=mutant_timeout_min_s,
                           mutant_cpu_min_s=mutant_cpu_min_s, use_cache=use_cache)[0]


def _cached_copy(result: MutationResult) -> MutationResult:
    clone = copy.copy(result)
    clone.cached = True
    return clone


@functools.lru_cache(maxsize=1024)  # thread-safe; a code that does not parse raises and is not cached
def _memoised_mutants(code: str, max_mutants: int | None, seed: int) -> tuple[Mutant, ...]:
    return tuple(generate_mutants(code, max_mutants=max_mutants, seed=seed))


def _mutants_of(code: str, max_mutants, seed: int) -> list[Mutant]:
    """:func:`generate_mutants`, memoised: in a GRPO batch every generation of a prompt shares its CUT.

    ``max_mutants`` may also be an explicit sequence of :class:`Mutant` (returned as a list).
    """
    if isinstance(max_mutants, (list, tuple)):
        return list(max_mutants)
    return list(_memoised_mutants(code, max_mutants, seed))


def _prepare(code, tests, *, module_name, max_mutants, seed, timeout_s, baseline_timeout_s, factor, min_s, cpu_min_s):
    """Mutants and the sandbox spec for one pair, or an early :class:`MutationResult`."""
    try:
        mutants = _mutants_of(code, max_mutants, seed)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return None, None, MutationResult(reason=f"code under test does not parse: {exc}")
    try:
        ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return None, None, MutationResult(total=len(mutants), survived=len(mutants), reason=f"tests do not parse: {exc}")
    jobs = [{"source": code, "stop_first": False, "timeout_s": baseline_timeout_s}]
    jobs += [{"source": m.source, "stop_first": True, "timeout_s": None} for m in mutants]
    spec = {"code": code, "tests": tests, "module_name": module_name, "write_module": False, "jobs": jobs,
            "timeout_s": timeout_s, "gate": {"factor": factor, "min_s": min_s, "max_s": max(min_s, timeout_s),
                                             "cpu_min_s": min(cpu_min_s, min_s)}}
    return mutants, spec, None


def _finish(mutants, raw) -> MutationResult:
    result = MutationResult(total=len(mutants), duration_s=raw["duration_s"])
    by_index = {job["i"]: job for job in raw["jobs"]}
    baseline = by_index.get(0)
    if baseline is None:
        result.survived = len(mutants)
        result.reason = f"tests did not finish on the original code: {raw['reason']}"
        return result
    outcomes = [t[1] for t in baseline["tests"]]
    result.baseline_passed = outcomes.count("passed")
    result.baseline_duration_s = baseline["duration_s"]
    problems = []
    if baseline["status"] != "ok":
        problems.append("timed out" if baseline["status"] == "timeout" else
                        f"the test process ended early ({baseline.get('exit') or 'no final report'})")
    if baseline["collect_errors"]:
        problems.append("collection/import error: " + baseline["collect_errors"][0][1][-300:])
    bad = [t for t in baseline["tests"] if t[1] in ("failed", "error")]
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
        if job is None or job["status"] == "skipped":  # not reached, or a paired rewrite whose original survived
            outcome = MutantOutcome(mutant.operator, mutant.line, mutant.description, killed=False)
        else:
            timed_out = job["status"] == "timeout"
            killed = (timed_out or job["status"] == "crash" or bool(job["collect_errors"])
                      or any(t[1] in ("failed", "error") for t in job["tests"]))
            outcome = MutantOutcome(mutant.operator, mutant.line, mutant.description, killed=killed, timed_out=timed_out)
        result.mutants.append(outcome)
    result.killed = sum(m.killed for m in result.mutants)
    result.timed_out = sum(m.timed_out for m in result.mutants)
    result.survived = result.total - result.killed
    result.kill_rate = result.killed / result.total if result.total else 0.0
    missing = result.total - (len(by_index) - 1)
    if not result.total:
        result.reason = "no mutants could be generated from the code"
    elif missing > 0:
        result.reason = f"{raw['reason'] or 'run stopped early'}; {missing} mutant(s) not evaluated, counted as survived"
    else:
        result.reason = f"ok: {result.killed}/{result.total} mutants killed"
    return result


def mutation_scores(codes: list[str], tests: list[str], *, n_workers: int | None = None, module_name: str = "solution",
                    max_mutants: int | None = 40, seed: int = 0, timeout_s: float = 60.0, memory_mb: int = 1024,
                    baseline_timeout_s: float = 10.0, mutant_timeout_factor: float = 3.0,
                    mutant_timeout_min_s: float = 0.3, mutant_cpu_min_s: float = 0.02,
                    use_cache: bool = True, keep_warm: bool = False) -> list[MutationResult]:
    """Score many (code, tests) pairs; parameters as in :func:`mutation_score`.

    Duplicate pairs in the batch run once and cached pairs not at all. The rest are spread over
    ``n_workers`` sandbox workers (default: one per core); each worker pays pytest's start-up once
    and serves pairs one after another (largest first), each pair isolated from the next.
    ``keep_warm=True`` keeps the workers for the next call (see
    :func:`fastdistill.rewards.sandbox.execute_pairs`).
    """
    if len(codes) != len(tests):
        raise ValueError("codes and tests must have the same length")
    n_workers = n_workers or os.cpu_count() or 1
    unique: dict[tuple[str, str], int] = {}
    for pair in zip(codes, tests):
        unique.setdefault(pair, len(unique))
    pairs = list(unique)
    results: list = [None] * len(pairs)
    keys = [_cache_key("v2", c, t, module_name, max_mutants, seed, memory_mb, mutant_timeout_factor,
                       mutant_timeout_min_s, mutant_cpu_min_s) for c, t in pairs]
    pending = []
    for index, ((code, test), key) in enumerate(zip(pairs, keys)):
        hit = _CACHE.get(key) if use_cache else None
        if hit is not None:
            results[index] = hit
            continue
        mutants, spec, early = _prepare(code, test, module_name=module_name, max_mutants=max_mutants, seed=seed,
                                        timeout_s=timeout_s, baseline_timeout_s=baseline_timeout_s,
                                        factor=mutant_timeout_factor, min_s=mutant_timeout_min_s,
                                        cpu_min_s=mutant_cpu_min_s)
        if early is not None:
            results[index] = early
        else:
            pending.append((index, mutants, spec))
    if pending:
        raws = execute_pairs([spec for _, _, spec in pending], memory_mb=memory_mb, n_workers=n_workers,
                             keep_warm=keep_warm)
        for (index, mutants, _), raw in zip(pending, raws):
            results[index] = _finish(mutants, raw)
    if use_cache:
        for result, key in zip(results, keys):
            _CACHE.put(key, result)
    return [results[unique[pair]] for pair in zip(codes, tests)]


_MIN_MUTANTS_PER_SHARD = 8  # a shard repeats its pair's collection and baselines (~30-40 ms): not for a few mutants


def _shard_specs(specs: list[dict], n_workers: int) -> tuple[list[dict], list[tuple[int, list[int]]]]:
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
            n_mut = sum(1 for job in spec["jobs"] if job.get("stop_first") and job.get("needs_killed") is None)
            shards_of[k] = max(1, min(per_pair, n_mut // _MIN_MUTANTS_PER_SHARD))
    run_specs, shards = [], []
    for k, spec in enumerate(specs):
        n = shards_of[k]
        if n == 1:
            run_specs.append(spec)
            shards.append((k, list(range(len(spec["jobs"])))))
            continue
        owner, turn = {}, 0
        for i, job in enumerate(spec["jobs"]):
            if job.get("base"):
                owner[i] = None  # every shard
            elif job.get("needs_killed") is not None:
                owner[i] = owner[job["needs_killed"]]
            elif job.get("stop_first"):
                owner[i], turn = turn % n, turn + 1
            else:
                owner[i] = 0  # repeats stay together
        for shard in range(n):
            members = [i for i, o in owner.items() if o is None or o == shard]
            local = {i: pos for pos, i in enumerate(members)}
            jobs = []
            for i in members:
                job = dict(spec["jobs"][i])
                if job.get("needs_killed") is not None:
                    job["needs_killed"] = local[job["needs_killed"]]
                jobs.append(job)
            run_specs.append(dict(spec, jobs=jobs))
            shards.append((k, members))
    return run_specs, shards


def _merge_shards(raws: list[dict], shards: list[tuple[int, list[int]]], n_pairs: int) -> list[dict]:
    """One raw result per pair from its shards' results (job indices mapped back; a baseline from the
    pair's first shard; completed only if every shard completed)."""
    merged: list = [None] * n_pairs
    for raw, (k, members) in zip(raws, shards):
        jobs = [dict(job, i=members[job["i"]]) for job in raw["jobs"]]
        if merged[k] is None:
            merged[k] = dict(raw, jobs=jobs)
            continue
        have = {job["i"] for job in merged[k]["jobs"]}
        out = merged[k]
        out["jobs"] = sorted(out["jobs"] + [job for job in jobs if job["i"] not in have], key=lambda j: j["i"])
        out["completed"] = out["completed"] and raw["completed"]
        out["timed_out"] = out["timed_out"] or raw["timed_out"]
        out["duration_s"] = max(out["duration_s"], raw["duration_s"])
        out["output"] = out["output"] + raw["output"]
        out["reason"] = "; ".join(r for r in (out["reason"], raw["reason"]) if r)
        out["exit"] = out["exit"] or raw["exit"]
        out["returncode"] = out["returncode"] if out["returncode"] is not None else raw["returncode"]
    return merged


def score_batch(mutation_requests: list[tuple], test_requests: list[tuple] = (), *, n_workers: int | None = None,
                module_name: str = "solution", seed: int = 0, timeout_s: float = 60.0, memory_mb: int = 1024,
                baseline_timeout_s: float = 10.0, mutant_timeout_factor: float = 3.0,
                mutant_timeout_min_s: float = 0.3, mutant_cpu_min_s: float = 0.02, test_timeout_s: float = 10.0,
                use_cache: bool = True, keep_warm: bool = False) -> tuple[list, list]:
    """Mutation scores and repeated test runs for a whole batch in one sandbox call, one pair per test file.

    ``mutation_requests``: ``(code, tests, max_mutants, needs)`` tuples, scored exactly as
    :func:`mutation_scores` scores ``(code, tests)`` with that ``max_mutants`` (and sharing its
    cache), or, when ``max_mutants`` is a sequence of :class:`Mutant`, against exactly those
    mutants, in that order (robustness pairs each sampled mutant with its rewrite); ``needs`` is
    ``None`` or the index of another request with the same ``tests`` that must pass on its code first; when it does not, this request is not run and its result is ``None``
    (robustness: a rewrite of the CUT only matters when the tests pass on the CUT itself).
    ``test_requests``: ``(code, tests, repeats)`` tuples, answered with a
    :class:`~fastdistill.rewards.sandbox.TestRun` as :func:`~fastdistill.rewards.sandbox.run_tests`
    (budget ``test_timeout_s``) would; when a mutation request of the same pair runs, the repeats
    also need the tests to pass on that run first (a failure there makes the run count as failed).

    Everything that uses one test file runs as one pair: pytest collects the tests once and every
    CUT version (original, rewrites), mutant and repeat is a job forked from that collection; each
    version has its own baseline, which sets its mutants' time budgets. Mutants shared by several
    requests of one CUT (different ``max_mutants``) run once. Returns ``(mutation_results, test_runs)``.
    """
    from fastdistill.rewards.sandbox import _to_test_run

    n_workers = n_workers or os.cpu_count() or 1
    factor, min_s, cpu_min_s = mutant_timeout_factor, mutant_timeout_min_s, mutant_cpu_min_s
    mutation_requests, test_requests = list(mutation_requests), list(test_requests)
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
        mutants, _, early = _prepare(code, tests, module_name=module_name, max_mutants=mm, seed=seed,
                                     timeout_s=timeout_s, baseline_timeout_s=baseline_timeout_s, factor=factor,
                                     min_s=min_s, cpu_min_s=cpu_min_s)
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
    gate = {"factor": factor, "min_s": min_s, "max_s": max(min_s, timeout_s), "cpu_min_s": min(cpu_min_s, min_s)}
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
        for code, group in sorted(plan["groups"].items(), key=lambda kv: bool(kv[1]["deps"]) and not kv[1]["unconditional"]):
            g = group["index"]
            deps = [] if group["unconditional"] else sorted(set(group["deps"]))
            if group["base"]:
                plan["n_mut"] += 1
                group["base"] = len(jobs)
                jobs.append({"source": code, "stop_first": False, "timeout_s": baseline_timeout_s, "group": g,
                             "base": True, "needs": deps})
                root = plan["groups"][plan["code"]]
                for source in group["mutants"]:
                    group["mutants"][source] = len(jobs)
                    job = {"source": source, "stop_first": True, "timeout_s": None, "group": g, "base": False,
                           "needs": [g, *deps]}
                    original = root["mutants"].get(group["pairs"].get(source)) if group is not root else None
                    if original is not None:  # a paired rewrite: only worth running if its original was killed
                        job["needs_killed"] = original
                    jobs.append(job)
            else:
                group["base"] = None
            for repeats in group["repeats"]:
                plan["n_test"] += 1
                indices = []
                for _ in range(repeats):
                    indices.append(len(jobs))
                    jobs.append({"source": code, "stop_first": False, "timeout_s": per_job, "group": g, "base": False,
                                 "needs": [g, *deps] if group["base"] is not None else []})
                group["repeats"][repeats] = (indices, group["repeats"][repeats])
        plan["spec"] = len(specs)
        specs.append({"code": plan["code"], "tests": tests, "module_name": module_name, "write_module": False,
                      "jobs": jobs, "gate": gate,
                      "timeout_s": timeout_s * plan["n_mut"] + (float(test_timeout_s) if plan["n_test"] else 0.0)})
    run_specs, shards = _shard_specs(specs, n_workers)
    raws = _merge_shards(execute_pairs(run_specs, memory_mb=memory_mb, n_workers=n_workers, keep_warm=keep_warm),
                         shards, len(specs)) if specs else []
    # 3. split each pair's jobs back into the requests' results
    t_results: list = [None] * len(test_requests)

    def sub_raw(raw, indices):
        by_index = {job["i"]: job for job in raw["jobs"]}
        jobs = [dict(by_index[j], i=n) for n, j in enumerate(indices) if j in by_index]
        return {**raw, "jobs": jobs}

    for plan in plans.values():
        raw = raws[plan["spec"]]
        for group in plan["groups"].values():
            for repeats, (indices, owners) in group["repeats"].items():
                part = sub_raw(raw, indices)
                if group["base"] is not None and raw["completed"] and len(part["jobs"]) < repeats:
                    part["reason"] = "tests failed on their first run; repeats not run"
                run = _to_test_run(part, repeats)
                for k in owners:
                    t_results[k] = run
    for i, mutants in pending.items():
        plan = plan_of[i]
        group = plan["groups"][mutation_requests[i][0]]
        raw = raws[plan["spec"]]
        ran = {job["i"] for job in raw["jobs"]}
        if group["base"] not in ran and needs_of[i] is not None and raw["completed"]:
            continue  # what it needs failed, so it was not run: result None
        result = _finish(mutants, sub_raw(raw, [group["base"], *(group["mutants"][m.source] for m in mutants)]))
        m_results[i] = result
        if use_cache:
            _CACHE.put(keys[i], result)
    return [m_results[first[keys[i]]] for i in range(len(mutation_requests))], t_results
