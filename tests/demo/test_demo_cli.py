"""`fastdistill demo` options and exit codes, checked without a full run (the stages are stubbed)."""

import pytest
import torch

import fastdistill.testing
from fastdistill.demo import main


class _Stop(Exception):
    """Raised by a stubbed stage to end the run once the probe has looked."""


def _seen_during_run(monkeypatch, tmp_path, look, *options):
    """``look()`` as the run sees it once its settings are made (when it builds the tokenizer, which is stubbed
    to end the run there), for ``fastdistill demo --quick *options``."""
    seen = []

    def probe(*args, **kwargs):
        seen.append(look())
        raise _Stop

    monkeypatch.setattr(fastdistill.testing, "tiny_tokenizer", probe)
    with pytest.raises(_Stop):
        main(["--quick", *options, "--output-dir", str(tmp_path)])
    return seen[0]


def test_threads_option_sets_torch_threads_during_the_run(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    wanted = before + 1  # differs from the current setting and from the config's default of 1
    assert _seen_during_run(monkeypatch, tmp_path, torch.get_num_threads, "--threads", str(wanted)) == wanted
    assert torch.get_num_threads() == before  # restored, also when a stage fails


def test_a_sandbox_that_scores_nothing_fails_the_demo_before_training(monkeypatch, tmp_path, capsys):
    import fastdistill.evaluation

    def dead_sandbox(rows, **kwargs):  # what scoring returns when no test could run
        rows = [{"name": r["name"], "passed": False, "kill_rate": 0.0, "reason": "No module named 'pytest'"}
                for r in rows]
        return {"kill_rate": 0.0, "pass_rate": 0.0, "extract_rate": 1.0, "n": len(rows), "rows": rows}

    def no_training(*args, **kwargs):
        raise AssertionError("the demo went on to train with a sandbox that scores nothing")

    monkeypatch.setattr(fastdistill.evaluation, "score_mutation", dead_sandbox)
    monkeypatch.setattr(fastdistill.testing, "tiny_tokenizer", no_training)
    assert main(["--quick", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fastdistill demo: failed: the test sandbox scored nothing" in err
    assert "kill rate 0.000" in err and "No module named 'pytest'" in err


def test_curation_that_keeps_no_row_is_a_failure(monkeypatch, tmp_path):
    import fastdistill.evaluation
    from fastdistill.demo import DemoConfig, DemoFailed, family_examples
    from fastdistill.demo.run import _curate

    train, _ = family_examples(seed=0, n_train=2, n_held_out=1)

    def teacher_writes_failing_tests(model, rows, path, **kwargs):  # every test file fails on its own code
        return [{**row, "completion": "def test_it():\n    assert False\n"} for row in rows]

    monkeypatch.setattr(fastdistill.evaluation, "generate", teacher_writes_failing_tests)
    with pytest.raises(DemoFailed, match=r"curation kept none of the 2 teacher outputs \(tests pass rate 0\.000"):
        _curate(None, None, train, DemoConfig.quick(), tmp_path)
    assert (tmp_path / "curation" / "manifest.json").is_file()  # written before failing, for a look


def _report(kill: float) -> dict:
    row = {"kill_rate": 0.0}
    return {"students": {"sft": row, "grpo_mutant": row}, "teacher": {"kill_rate": None},
            "seen_code": {"sft": {"kill_rate": kill}}, "curation": {"metrics": {"mean_kill_rate": 0.0}}}


def test_a_report_whose_kill_rates_are_all_zero_is_a_failure():
    from fastdistill.demo import DemoFailed, check_kill_rates

    with pytest.raises(DemoFailed, match=r"every kill rate in the report is 0 or missing \(5 measured: sft "):
        check_kill_rates(_report(0.0), "out")
    check_kill_rates(_report(0.4), "out")  # one model killed something: a result, whatever the comparisons say


def test_deterministic_algorithms_are_on_during_the_run_and_restored(monkeypatch, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    assert _seen_during_run(monkeypatch, tmp_path, torch.are_deterministic_algorithms_enabled) is True
    assert torch.are_deterministic_algorithms_enabled() == before


def test_the_imports_objects_are_frozen_for_the_run_and_unfrozen_after(monkeypatch, tmp_path):
    import gc

    assert gc.get_freeze_count() == 0
    # torch, transformers and TRL's objects: out of the collector's full passes
    assert _seen_during_run(monkeypatch, tmp_path, gc.get_freeze_count) > 100_000
    assert gc.get_freeze_count() == 0  # unfrozen, also when a stage fails


def test_objects_the_caller_froze_stay_frozen(monkeypatch, tmp_path):
    import gc

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        _seen_during_run(monkeypatch, tmp_path, gc.get_freeze_count)
        # neither unfrozen nor frozen further by the demo (frozen objects that die leave the count)
        assert frozen * 0.9 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
