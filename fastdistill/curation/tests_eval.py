"""Run each row's pytest tests against its code with the reward engine (``fastdistill.rewards``).

``fastdistill.rewards`` is imported inside the functions, so ``import fastdistill.curation`` stays
light; it never imports torch either.
"""

from __future__ import annotations

import logging

from fastdistill.curation._ds import empty_output, restore_format

logger = logging.getLogger(__name__)

TESTS_COLUMNS = ("tests_passed", "tests_n_passed", "tests_n_failed", "tests_timed_out", "tests_time_s",
                 "tests_error", "kill_rate")


def eval_tests_one(code: str | None, tests: str | None, *, timeout_s: float = 10.0, mutation: bool = True,
                   max_mutants: int | None = 20, seed: int = 0) -> dict:
    """Evaluate one (code, tests) pair. See :func:`tests_exec_eval` for the columns.

    A bad row never raises; a sandbox that cannot run raises ``SandboxUnavailableError``.
    """
    from fastdistill.rewards import SandboxUnavailableError, mutation_score, run_tests  # the sandboxed engine

    out = {"tests_passed": False, "tests_n_passed": 0, "tests_n_failed": 0, "tests_timed_out": False,
           "tests_time_s": 0.0, "tests_error": None, "kill_rate": None}
    if not _usable(code) or not _usable(tests):
        out["tests_error"] = "missing_input"
        return out
    try:
        run = run_tests(code, tests, timeout_s=timeout_s)
    except SandboxUnavailableError:
        raise  # not a property of the row: every row would be dropped
    except Exception as exc:  # noqa: BLE001 - a row never raises
        logger.warning("tests_exec_eval: run_tests raised %s: %s", type(exc).__name__, exc)
        out["tests_error"] = "internal_error"
        return out
    _columns_from_run(out, run)
    if not out["tests_passed"]:
        return out
    if mutation:
        try:
            res = mutation_score(code, tests, max_mutants=max_mutants, seed=seed)
            out["kill_rate"] = None if res.kill_rate is None else float(res.kill_rate)
        except SandboxUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("tests_exec_eval: mutation_score raised %s: %s", type(exc).__name__, exc)
            out["tests_error"] = "mutation_error"
    return out


def _columns_from_run(out: dict, run) -> dict:
    """Fill the test columns of ``out`` from a :class:`~fastdistill.rewards.TestRun` (one row)."""
    out["tests_n_passed"] = int(run.passed)
    out["tests_n_failed"] = int(run.failed) + int(run.errors)
    out["tests_timed_out"] = bool(run.timed_out)
    out["tests_time_s"] = float(run.duration_s)
    out["tests_passed"] = bool(run.passed > 0 and run.failed == 0 and run.errors == 0 and not run.timed_out)
    if not out["tests_passed"]:
        if run.timed_out:
            out["tests_error"] = "timeout"
        elif run.passed == 0 and run.failed == 0 and run.errors == 0:
            out["tests_error"] = "no_tests"
        elif run.errors:
            out["tests_error"] = "test_errors"
        else:
            out["tests_error"] = "tests_failed"
    return out


def _usable(text) -> bool:
    """A code or tests cell worth running: a string with something besides whitespace."""
    return isinstance(text, str) and bool(text.strip())


def _empty_row() -> dict:
    return {"tests_passed": False, "tests_n_passed": 0, "tests_n_failed": 0, "tests_timed_out": False,
            "tests_time_s": 0.0, "tests_error": None, "kill_rate": None}


def eval_tests_batch(codes: list, tests: list, *, timeout_s: float | None = None, mutation: bool = True,
                     max_mutants=None, seed: int | None = None, sandbox=None) -> list[dict]:
    """Evaluate many (code, tests) pairs through the reward engine's batch scorer (warm workers).

    Same columns, per row, as :func:`eval_tests_one` (the row-by-row reference path): the test run
    of a row is the baseline run of its mutation score (one collection of the tests serves the run
    and every mutant), so a row costs one sandbox pair instead of two. ``sandbox``: a
    :class:`~fastdistill.rewards.SandboxSettings` (or a dict of its fields); ``timeout_s``,
    ``max_mutants`` and ``seed`` override it when given (``max_mutants=None`` there means "from
    settings"). Rows whose code or tests do not parse (nothing to mutate) and ``mutation=False``
    runs go through ``run_tests_many``. Raises ``SandboxUnavailableError`` when the sandbox cannot run.
    """
    from fastdistill.rewards import SandboxSettings, run_tests_many
    from fastdistill.rewards.mutation import score_batch

    settings = SandboxSettings.coerce(sandbox).replace(test_timeout_s=timeout_s, max_mutants=max_mutants, seed=seed)
    # the baseline is the row's test run: give it run_tests' per-run budget
    settings = settings.replace(baseline_timeout_s=max(0.5, settings.test_timeout_s - 0.5))
    rows = [_empty_row() for _ in codes]
    todo = []
    for i, (code, test) in enumerate(zip(codes, tests)):
        if not _usable(code) or not _usable(test):  # the same rule as eval_tests_one
            rows[i]["tests_error"] = "missing_input"
        else:
            todo.append(i)
    plain, early = list(todo), {}
    if mutation and todo:
        results, _ = score_batch([(codes[i], tests[i], settings.max_mutants, None) for i in todo], settings=settings)
        plain = []
        for i, res in zip(todo, results):
            if res.baseline_run is None:  # code or tests do not parse: run the tests as they are
                plain.append(i)
                early[i] = res
                continue
            _columns_from_run(rows[i], res.baseline_run)
            if rows[i]["tests_passed"]:
                rows[i]["kill_rate"] = float(res.kill_rate)
    if plain:
        runs = run_tests_many([codes[i] for i in plain], [tests[i] for i in plain], timeout_s=settings.test_timeout_s,
                              memory_mb=settings.memory_mb, n_workers=settings.n_workers,
                              keep_warm=settings.keep_warm)
        for i, run in zip(plain, runs):
            _columns_from_run(rows[i], run)
            if i in early and rows[i]["tests_passed"]:  # what mutation_score says of unparseable input
                rows[i]["kill_rate"] = float(early[i].kill_rate)
    return rows


def tests_exec_eval_rows(batch: dict, *, code_column: str = "code", tests_column: str = "tests",
                         timeout_s: float | None = None, mutation: bool = True, max_mutants=None,
                         seed: int | None = None, sandbox=None) -> dict:
    """Batched row function of :func:`tests_exec_eval` (the whole batch in one batch-scorer call)."""
    for c in (code_column, tests_column):
        if c not in batch:
            raise KeyError(f"tests_exec_eval: column {c!r} missing (columns: {list(batch)})")
    cols: dict[str, list] = {k: [] for k in TESTS_COLUMNS}
    for r in eval_tests_batch(batch[code_column], batch[tests_column], timeout_s=timeout_s, mutation=mutation,
                              max_mutants=max_mutants, seed=seed, sandbox=sandbox):
        for k in TESTS_COLUMNS:
            cols[k].append(r[k])
    return cols


def tests_exec_eval(ds, *, code_column: str = "code", tests_column: str = "tests", timeout_s: float | None = None,
                    mutation: bool = True, max_mutants=None, seed: int | None = None, num_proc: int | None = None,
                    batch_size: int = 128, sandbox=None):
    """Run each row's tests against its code in the reward engine's sandbox and add the results.

    Adds ``tests_passed`` (bool: at least one test, none failed/errored, no timeout),
    ``tests_n_passed``, ``tests_n_failed`` (failures + errors), ``tests_timed_out``,
    ``tests_time_s`` (runtime of the test run), ``tests_error`` (``missing_input``, ``timeout``,
    ``no_tests``, ``test_errors``, ``tests_failed``, ``mutation_error``, ``internal_error`` or None)
    and ``kill_rate`` (mutation kill rate for passing rows with ``mutation=True``, else None).

    Rows go ``batch_size`` at a time through the reward engine's batch scorer on warm sandbox
    workers (one pair per row: the test run is the baseline of the mutation score). ``sandbox``
    (a ``fastdistill.rewards.SandboxSettings`` or, in a curation YAML, a mapping of its fields:
    ``sandbox: {memory_mb: 512, max_mutants: 10}``) sets the sandbox; ``timeout_s`` (one test
    run), ``max_mutants`` and ``seed`` override it when given. ``num_proc`` is the number of
    sandbox workers (the parallelism lives in the engine, not in ``datasets`` processes).
    Rows keep their order; a bad row never raises, but a sandbox that cannot run raises
    ``fastdistill.rewards.SandboxUnavailableError`` (it would otherwise fail every row).
    """
    import datasets

    from fastdistill.curation._params import check_step_params

    given = {"timeout_s": timeout_s, "max_mutants": max_mutants, "seed": seed}  # None: from the sandbox settings
    check_step_params("tests_exec_eval", mutation=mutation, num_proc=num_proc, batch_size=batch_size,
                      **{k: v for k, v in given.items() if v is not None})
    for c in (code_column, tests_column):
        if c not in ds.column_names:
            raise KeyError(f"tests_exec_eval: column {c!r} missing (columns: {ds.column_names})")
    if num_proc:
        from fastdistill.rewards import SandboxSettings

        sandbox = SandboxSettings.coerce(sandbox).replace(workers=int(num_proc))
    features = ds.features.copy()
    features.update({"tests_passed": datasets.Value("bool"), "tests_n_passed": datasets.Value("int64"),
                     "tests_n_failed": datasets.Value("int64"), "tests_timed_out": datasets.Value("bool"),
                     "tests_time_s": datasets.Value("float64"), "tests_error": datasets.Value("string"),
                     "kill_rate": datasets.Value("float64")})
    if len(ds) == 0:
        return empty_output(ds, features)
    out = ds.with_format(None).map(
        tests_exec_eval_rows, batched=True, batch_size=batch_size, features=features,
        fn_kwargs={"code_column": code_column, "tests_column": tests_column, "timeout_s": timeout_s,
                   "mutation": mutation, "max_mutants": max_mutants, "seed": seed, "sandbox": sandbox},
        desc="tests_exec_eval")
    return restore_format(out, ds)
