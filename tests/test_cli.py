"""The ``fastdistill`` command: user errors are one message and exit 2, tracebacks only with --debug."""

import pytest

import fastdistill.cli as cli
from fastdistill.validation import ConfigError


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setattr(cli, "DEBUG", False)


def test_user_errors_exit_2_with_one_message(capsys):
    def bad():
        raise KeyError("column 'code' missing (columns: ['x'])")

    assert cli.guarded("eval", bad) == 2
    err = capsys.readouterr().err
    assert err == "fastdistill eval: error: column 'code' missing (columns: ['x'])\n"


def test_unexpected_errors_exit_1_and_point_to_debug(capsys):
    def broken():
        raise RuntimeError("boom")

    assert cli.guarded("curate", broken) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "--debug" in err and "Traceback" not in err


def test_debug_flag_shows_the_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {path: in.jsonl}\nsteps:\n  - compute_hash: {columns: [q]}\ngates: {}\n")
    with pytest.raises(ConfigError, match="did you mean 'gate'"):
        cli.main(["--debug", "curate", "--config", str(cfg)])


def test_bad_config_through_the_command(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {path: in.jsonl}\nsteps: [{compute_hash: {columns: [q]}}]\nnum_proc: -1\n")
    assert cli.main(["curate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: num_proc: must be >= 1" in err and "Traceback" not in err
    assert cli.main(["curate", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    cfg.write_text("input: [unclosed\n")
    assert cli.main(["curate", "--config", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_unknown_command_suggests_the_closest(capsys):
    assert cli.main(["curat"]) == 2
    assert "did you mean 'curate'" in capsys.readouterr().err
