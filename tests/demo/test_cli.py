"""`fastdistill demo` options and exit codes, checked without a full run (the stages are stubbed)."""

import pytest
import torch

import fastdistill.testing
from fastdistill.demo import main


class _Stop(Exception):
    """Raised by a stubbed stage to end the run once the probe has looked."""


def test_threads_option_sets_torch_threads_during_the_run(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    wanted = before + 1  # differs from the current setting and from the config's default of 1
    seen = {}

    def probe(*args, **kwargs):  # the tokenizer is built once the run has set its threads
        seen["threads"] = torch.get_num_threads()
        raise _Stop

    monkeypatch.setattr(fastdistill.testing, "tiny_tokenizer", probe)
    with pytest.raises(_Stop):
        main(["--quick", "--threads", str(wanted), "--output-dir", str(tmp_path)])
    assert seen["threads"] == wanted
    assert torch.get_num_threads() == before  # restored, also when a stage fails


def test_deterministic_algorithms_are_on_during_the_run_and_restored(monkeypatch, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    seen = {}

    def probe(*args, **kwargs):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        raise _Stop

    monkeypatch.setattr(fastdistill.testing, "tiny_tokenizer", probe)
    with pytest.raises(_Stop):
        main(["--quick", "--output-dir", str(tmp_path)])
    assert seen["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() == before
