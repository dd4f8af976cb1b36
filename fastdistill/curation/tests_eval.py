"""Run each row's pytest tests against its code with the reward engine (``fastdistill.rewards``).

``fastdistill.rewards`` is imported inside the functions, so ``import fastdistill.curation`` stays
light; it never imports torch either.
"""

from __future__ import annotations

import logging

from fastdistill.curation._ds import restore_format

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
    if not code or not tests:
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


def tests_exec_eval_rows(batch: dict, *, code_column: str = "code", tests_column: str = "tests", timeout_s: float = 10.0,
                         mutation: bool = True, max_mutants: int | None = 20, seed: int = 0) -> dict:
    """Batched row function of :func:`tests_exec_eval`."""
    for c in (code_column, tests_column):
        if c not in batch:
            raise KeyError(f"tests_exec_eval: column {c!r} missing (columns: {list(batch)})")
    cols: dict[str, list] = {k: [] for k in TESTS_COLUMNS}
    for code, tests in zip(batch[code_column], batch[tests_column]):
        r = eval_tests_one(code, tests, timeout_s=timeout_s, mutation=mutation, max_mutants=max_mutants, seed=seed)
        for k in TESTS_COLUMNS:
            cols[k].append(r[k])
    return cols


def tests_exec_eval(ds, *, code_column: str = "code", tests_column: str = "tests", timeout_s: float = 10.0,
                    mutation: bool = True, max_mutants: int | None = 20, seed: int = 0, num_proc: int | None = None,
                    batch_size: int = 8):
    """Run each row's tests against its code in the reward engine's sandbox and add the results.

    Adds ``tests_passed`` (bool: at least one test, none failed/errored, no timeout),
    ``tests_n_passed``, ``tests_n_failed`` (failures + errors), ``tests_timed_out``,
    ``tests_time_s`` (runtime of the test run), ``tests_error`` (``missing_input``, ``timeout``,
    ``no_tests``, ``test_errors``, ``tests_failed``, ``mutation_error``, ``internal_error`` or None)
    and ``kill_rate`` (mutation kill rate from ``fastdistill.rewards.mutation_score`` for passing
    rows with ``mutation=True``, else None). Rows keep their order; a bad row never raises, but a
    sandbox that cannot run raises ``fastdistill.rewards.SandboxUnavailableError`` (it would
    otherwise fail every row).
    """
    import datasets

    for c in (code_column, tests_column):
        if c not in ds.column_names:
            raise KeyError(f"tests_exec_eval: column {c!r} missing (columns: {ds.column_names})")
    features = ds.features.copy()
    features.update({"tests_passed": datasets.Value("bool"), "tests_n_passed": datasets.Value("int64"),
                     "tests_n_failed": datasets.Value("int64"), "tests_timed_out": datasets.Value("bool"),
                     "tests_time_s": datasets.Value("float64"), "tests_error": datasets.Value("string"),
                     "kill_rate": datasets.Value("float64")})
    out = ds.with_format(None).map(
        tests_exec_eval_rows, batched=True, batch_size=batch_size, num_proc=num_proc, features=features,
        fn_kwargs=dict(code_column=code_column, tests_column=tests_column, timeout_s=timeout_s, mutation=mutation,
                       max_mutants=max_mutants, seed=seed),
        desc="tests_exec_eval")
    return restore_format(out, ds)
