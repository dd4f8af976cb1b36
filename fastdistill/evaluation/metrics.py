"""Score generated pytest files by running them: mutation kill rate, pass rate, speed, stability.

Every function returns a dict whose headline numbers are plain means of the per-example rows it
also returns (``rows``), so a report can always be re-derived from its own details.
"""

from __future__ import annotations

import logging
import os
import statistics

logger = logging.getLogger(__name__)

__all__ = ["evaluate_mutation", "evaluate_speed", "score_mutation", "score_speed", "mean_or_none", "speed_fields"]


def mean_or_none(values) -> float | None:
    """Mean of the non-None values, or None when there are none."""
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _batched(rows: list, keys, score, chunk: int, desc: str, progress: bool) -> list:
    """``score(rows_subset) -> results`` over ``rows`` grouped by ``keys`` (one engine call per group and
    chunk, so the sandbox's batch scorer and warm workers do the work); results in row order."""
    from tqdm.auto import tqdm

    out: list = [None] * len(rows)
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    with tqdm(total=len(rows), desc=desc, unit="ex", disable=not progress) as bar:
        for key, members in groups.items():
            for start in range(0, len(members), chunk):
                part = members[start:start + chunk]
                for i, result in zip(part, score(key, part)):
                    out[i] = result
                bar.update(len(part))
    return out


def _generations(model_or_path, dataset, generations, tokenizer, generation_kwargs):
    from fastdistill.evaluation.generation import generate, read_jsonl

    if generations is not None:
        if isinstance(generations, (str, os.PathLike)):
            generations = read_jsonl(generations)
        rows = [dict(r) for r in generations]
        check_generation_rows(rows)
        return rows
    if model_or_path is None:
        raise ValueError("give a model (or path) to generate with, or pre-generated completions via generations=")
    if dataset is None:
        raise ValueError("a dataset is needed to generate completions")
    return generate(model_or_path, dataset, tokenizer=tokenizer, **(generation_kwargs or {}))


def check_generation_rows(rows, source: str | None = None) -> None:
    """Refuse generations that cannot be scored, before any work: every row needs a non-empty string
    ``code`` and a ``completion`` (string or messages). ``ValueError`` names the rows (up to 5) and
    what is wrong; ``source`` (a file name) prefixes the message."""
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"row {i}: expected an object, got {type(row).__name__}")
            continue
        code = row.get("code")
        if "code" not in row:
            problems.append(f"row {i}: missing field 'code' (the code under test; fields present: {sorted(row)})")
        elif not isinstance(code, str) or not code.strip():
            problems.append(f"row {i}: field 'code' must be a non-empty string, got {code!r:.60}")
        if "completion" not in row:
            problems.append(f"row {i}: missing field 'completion' (fields present: {sorted(row)})")
    if problems:
        head = f"{source}: " if source else ""
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"{head}{len(problems)} bad generation row(s):\n  " + "\n  ".join(problems[:5]) + more)


def _base_row(row: dict, tests: str | None) -> dict:
    return {"index": row.get("index"), "name": row.get("name"), "sample": row.get("sample", 0),
            "extracted": tests is not None}


def score_mutation(generations, *, max_mutants=None, n_workers: int | None = None, timeout_s: float | None = None,
                   memory_mb: int | None = None, keep_text: bool = True, progress: bool = True, sandbox=None) -> dict:
    """Mutation-score pre-generated completions (rows with ``code`` and ``completion``).

    For each row the test file is pulled out of the completion
    (:func:`fastdistill.rewards.functions.extract_test_code`) and run against the row's code and
    its mutants, every row through the reward engine's batch scorer
    (:func:`fastdistill.rewards.mutation_scores`, warm workers). A completion without a test
    file, or whose tests fail on the original code, scores 0. ``sandbox``: a
    :class:`~fastdistill.rewards.SandboxSettings` (or dict); ``max_mutants``, ``n_workers``,
    ``timeout_s`` (one whole mutation score) and ``memory_mb`` override it when given.

    Returns:
        ``{"kill_rate", "pass_rate", "extract_rate", "n", "rows"}``: ``kill_rate`` is the mean of
        the rows' ``kill_rate``, ``pass_rate`` the mean of their ``passed`` (tests pass on the
        original code), ``extract_rate`` the fraction with a parseable test file.
    """
    from fastdistill.rewards import SandboxSettings, mutation_scores
    from fastdistill.rewards.functions import extract_test_code

    settings = SandboxSettings.coerce(sandbox).replace(max_mutants=max_mutants, workers=n_workers,
                                                       pair_timeout_s=timeout_s, memory_mb=memory_mb)
    rows = list(generations)
    check_generation_rows(rows)
    extracted = [extract_test_code(row["completion"]) for row in rows]
    scored = [None] * len(rows)
    todo = [i for i, tests in enumerate(extracted) if tests is not None]

    def score(module_name, part):
        return mutation_scores([rows[todo[k]]["code"] for k in part], [extracted[todo[k]] for k in part],
                               module_name=module_name, settings=settings)

    results = _batched(todo, [rows[i].get("module_name") or "solution" for i in todo],
                       score, max(16, 8 * settings.n_workers), "mutation score", progress) if todo else []
    for i, res in zip(todo, results):
        scored[i] = {**_base_row(rows[i], extracted[i]), "passed": bool(res.baseline_ok),
                     "kill_rate": float(res.kill_rate), "killed": int(res.killed), "total": int(res.total),
                     "reason": res.reason}
    for i, row in enumerate(rows):
        if scored[i] is None:
            scored[i] = {**_base_row(row, None), "passed": False, "kill_rate": 0.0, "killed": 0, "total": 0,
                         "reason": "no test file in the completion"}
        if keep_text:
            scored[i]["tests"] = extracted[i]
    result = {
        "kill_rate": mean_or_none(r["kill_rate"] for r in scored) if scored else None,
        "pass_rate": mean_or_none(float(r["passed"]) for r in scored) if scored else None,
        "extract_rate": mean_or_none(float(r["extracted"]) for r in scored) if scored else None,
        "n": len(scored),
        "rows": scored,
    }
    logger.info("mutation: kill rate %s, pass rate %s over %d completions", result["kill_rate"], result["pass_rate"],
                len(scored))
    return result


def speed_fields(run, repeats: int) -> dict:
    """The per-file fields of :func:`score_speed` from one ``TestRun`` of ``repeats`` repeats (None: no test file).

    ``ran``: the tests ran to completion every time (pass or fail, no timeout or crash); ``passed``: they
    passed every time without flakiness; ``runtime_s`` / ``cv``: mean and coefficient of variation of the
    repeat durations, set only when the tests ran.
    """
    out = dict(ran=False, passed=False, flaky=False, runtime_s=None, cv=None, repeat_durations_s=[],
               reason="no test file in the completion")
    if run is not None:
        durations = list(run.repeat_durations_s)
        ran = bool(run.completed and not run.timed_out and len(durations) == repeats and run.tests)
        out.update(ran=ran, passed=bool(run.ok and not run.flaky), flaky=bool(run.flaky),
                   repeat_durations_s=durations, reason=run.reason)
        if ran:
            mean = statistics.fmean(durations)
            out.update(runtime_s=mean, cv=statistics.pstdev(durations) / mean if mean > 0 else 0.0)
    return out


def score_speed(generations, *, repeats: int = 5, n_workers: int | None = None, timeout_s: float | None = None,
                memory_mb: int | None = None, progress: bool = True, sandbox=None) -> dict:
    """Run each pre-generated test file ``repeats`` times on its code and measure runtime and stability.

    Every row goes through :func:`fastdistill.rewards.run_tests_many` (warm workers). Per row:
    ``runtime_s`` is the mean over repeats of the tests' own time (pytest setup + call +
    teardown, interpreter start-up excluded), ``cv`` the coefficient of variation across repeats,
    ``ran`` whether the tests ran to completion every time (pass or fail, no timeout/crash),
    ``passed`` whether they passed every time, ``flaky`` whether outcomes differed between repeats.
    ``timeout_s`` is the budget of one file's runs, all repeats (default: twice
    ``sandbox.test_timeout_s``).

    Returns:
        ``{"runtime_s", "cv", "runtime_all_s", "pass_rate", "stable_rate", "n", "n_timed", "n_ran", "rows"}``:
        ``runtime_s`` and ``cv`` are the means over the ``n_timed`` rows whose tests passed every
        repeat (the speed of failing tests means nothing; a file with no passing run has no
        runtime, and the means are None when no row passed); ``runtime_all_s`` is the mean over
        the ``n_ran`` rows whose tests ran, pass or fail; ``stable_rate`` is the fraction of all
        rows that passed every repeat without flakiness.
    """
    from fastdistill.rewards import SandboxSettings, run_tests_many
    from fastdistill.rewards.functions import extract_test_code

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    settings = SandboxSettings.coerce(sandbox).replace(workers=n_workers, memory_mb=memory_mb)
    budget = float(timeout_s) if timeout_s is not None else 2 * settings.test_timeout_s
    rows = list(generations)
    check_generation_rows(rows)
    extracted = [extract_test_code(row["completion"]) for row in rows]
    todo = [i for i, tests in enumerate(extracted) if tests is not None]

    def score(module_name, part):
        part = [todo[k] for k in part]
        return run_tests_many([rows[i]["code"] for i in part], [extracted[i] for i in part], repeats=repeats,
                              timeout_s=budget, memory_mb=settings.memory_mb, module_name=module_name,
                              n_workers=settings.n_workers, keep_warm=settings.keep_warm)

    runs = _batched(todo, [rows[i].get("module_name") or "solution" for i in todo], score,
                    max(16, 8 * settings.n_workers), "speed", progress) if todo else []
    run_of = dict(zip(todo, runs))
    timed = []
    for i, row in enumerate(rows):
        timed.append(_base_row(row, extracted[i]) | speed_fields(run_of.get(i), repeats))
    result = {
        "runtime_s": mean_or_none(r["runtime_s"] for r in timed if r["ran"] and r["passed"]),
        "cv": mean_or_none(r["cv"] for r in timed if r["ran"] and r["passed"]),
        "runtime_all_s": mean_or_none(r["runtime_s"] for r in timed if r["ran"]),
        "pass_rate": mean_or_none(float(r["passed"]) for r in timed) if timed else None,
        "stable_rate": mean_or_none(float(r["passed"] and not r["flaky"]) for r in timed) if timed else None,
        "n": len(timed),
        "n_timed": sum(1 for r in timed if r["ran"] and r["passed"]),
        "n_ran": sum(1 for r in timed if r["ran"]),
        "repeats": repeats,
        "rows": timed,
    }
    logger.info("speed: mean runtime %s s, mean cv %s over %d/%d test files", result["runtime_s"], result["cv"],
                len(timed) and result["n_timed"], len(timed))
    return result


def evaluate_mutation(model_or_path=None, dataset=None, *, generations=None, tokenizer=None,
                      generation_kwargs: dict | None = None, **score_kwargs) -> dict:
    """Generate tests for each example's code with a model and mutation-score them.

    Args:
        model_or_path: the student (a loaded model with ``tokenizer``, or a path); None when
            ``generations`` are given.
        dataset: rows with ``code`` (and optionally ``prompt``, ``name``), a ``datasets.Dataset``,
            a list of dicts or a JSON/JSONL path.
        generations: pre-generated rows (list or JSONL path, from :func:`generate`); skips generation.
        generation_kwargs: settings for :func:`fastdistill.evaluation.generate` (``temperature``...).
        score_kwargs: passed to :func:`score_mutation` (``max_mutants``, ``n_workers``...).

    Returns:
        See :func:`score_mutation`: mean ``kill_rate``, ``pass_rate`` and the per-example ``rows``.
    """
    rows = _generations(model_or_path, dataset, generations, tokenizer, generation_kwargs)
    return score_mutation(rows, **score_kwargs)


def evaluate_speed(model_or_path=None, dataset=None, *, generations=None, tokenizer=None,
                   generation_kwargs: dict | None = None, **score_kwargs) -> dict:
    """Generate tests with a model (or take ``generations``) and measure their runtime and stability.

    Same arguments as :func:`evaluate_mutation`; ``score_kwargs`` go to :func:`score_speed`
    (``repeats``, ``n_workers``...). Returns mean ``runtime_s``, ``cv``, ``stable_rate`` and ``rows``.
    """
    rows = _generations(model_or_path, dataset, generations, tokenizer, generation_kwargs)
    return score_speed(rows, **score_kwargs)
