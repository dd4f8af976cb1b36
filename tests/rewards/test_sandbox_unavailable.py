"""A sandbox that cannot run is an exception (SandboxUnavailableError), never a score.

Each cause is simulated for real: an interpreter without pytest, ``unshare`` failing, and an
interpreter that crashes at start. Every entry point must raise with a message naming the cause and
the worker's output, while a test file that fails stays an ordinary score.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastdistill.rewards import (
    SandboxUnavailableError,
    clear_cache,
    close_idle_workers,
    composite_reward,
    mutation_score,
    mutation_scores,
    run_tests,
    run_tests_many,
    sandbox,
)
from fastdistill.rewards.functions import MutantKillReward
from fastdistill.rewards.mutation import score_batch

CODE = "def add(a, b):\n    return a + b\n"
GOOD = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n    assert add(-1, 1) == 0\n"
BAD = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 6\n"


@pytest.fixture(autouse=True)
def _fresh_engine():
    """No warm worker or cached result from another test may answer in place of a new worker."""
    close_idle_workers()
    clear_cache()
    yield
    close_idle_workers()
    clear_cache()


@pytest.fixture(scope="module")
def python_without_pytest(tmp_path_factory) -> str:
    """A real virtual environment with nothing installed (``-I`` keeps user site-packages out too)."""
    base = getattr(sys, "_base_executable", sys.executable)
    env_dir = tmp_path_factory.mktemp("nopytest") / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True)
    python = str(env_dir / "bin" / "python")
    probe = subprocess.run([python, "-I", "-c", "import pytest"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare venv unexpectedly imports pytest"
    return python


@pytest.fixture()
def no_pytest(monkeypatch, python_without_pytest):
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", python_without_pytest)
    return python_without_pytest


@pytest.fixture()
def failing_unshare(monkeypatch, tmp_path):
    """Namespace set-up fails: ``unshare`` exits 1 with a message, as on a host that forbids it."""
    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    real = sandbox.sandbox_capabilities()
    monkeypatch.setattr(sandbox, "sandbox_capabilities", lambda: {**real, "namespaces": True, "unshare": str(fake)})
    return fake


@pytest.fixture()
def crashing_python(monkeypatch, tmp_path):
    """An interpreter that dies of a signal at start, after a fatal-error line."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding: simulated' >&2\n"
                    f"exec {sys.executable} -I -c 'import ctypes; ctypes.string_at(0)'\n")  # a real segfault
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", str(fake))
    return fake


CAUSES = {
    "no_pytest": ("cannot import pytest", "ModuleNotFoundError"),
    "failing_unshare": ("unshare failed: Operation not permitted", "return code 1"),
    "crashing_python": ("Fatal Python error: init_fs_encoding: simulated", "return code -11"),
}


@pytest.fixture(params=sorted(CAUSES))
def cause(request):
    request.getfixturevalue(request.param)
    return CAUSES[request.param]


def _check(excinfo, cause):
    message = str(excinfo.value)
    assert "sandbox worker did not start" in message
    for part in cause:
        assert part in message, message


def test_run_tests_raises(cause):
    with pytest.raises(SandboxUnavailableError) as excinfo:
        run_tests(CODE, GOOD)
    _check(excinfo, cause)


def test_run_tests_many_raises(cause):
    with pytest.raises(SandboxUnavailableError) as excinfo:
        run_tests_many([CODE, CODE, CODE], [GOOD, BAD, GOOD], n_workers=2)
    _check(excinfo, cause)


def test_mutation_score_raises(cause):
    with pytest.raises(SandboxUnavailableError) as excinfo:
        mutation_score(CODE, GOOD, max_mutants=5)
    _check(excinfo, cause)


def test_mutation_scores_and_score_batch_raise(cause):
    with pytest.raises(SandboxUnavailableError) as excinfo:
        mutation_scores([CODE, CODE], [GOOD, BAD], max_mutants=5, n_workers=2)
    _check(excinfo, cause)
    with pytest.raises(SandboxUnavailableError) as excinfo:
        score_batch([(CODE, GOOD, 5, None)], [(CODE, GOOD, 2)], n_workers=1)
    _check(excinfo, cause)


def test_reward_functions_raise_instead_of_scoring_zero(cause):
    completions = [[{"role": "assistant", "content": f"```python\n{GOOD}```"}]] * 2
    with pytest.raises(SandboxUnavailableError) as excinfo:
        MutantKillReward(max_mutants=5)(prompts=[None, None], completions=completions, code=[CODE, CODE])
    _check(excinfo, cause)
    for fused in (True, False):  # the fused path must not fall back to zeros either
        reward = composite_reward(preset="mutant", max_mutants=5, fused=fused)
        with pytest.raises(SandboxUnavailableError) as excinfo:
            reward(prompts=[None, None], completions=completions, code=[CODE, CODE])
        _check(excinfo, cause)


def test_tests_exec_eval_raises_instead_of_dropping_rows(cause):
    import datasets

    from fastdistill.curation import tests_exec_eval

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"code": [CODE, CODE], "tests": [GOOD, BAD]})
    with pytest.raises(SandboxUnavailableError) as excinfo:
        tests_exec_eval(ds, max_mutants=5)
    _check(excinfo, cause)


def test_eval_cli_exits_nonzero_with_the_message(cause, tmp_path, capsys):
    from fastdistill.evaluation.cli import main

    gens = tmp_path / "gens.jsonl"
    gens.write_text(json.dumps({"code": CODE, "completion": f"```python\n{GOOD}```", "name": "add"}) + "\n")
    status = main(["--generations", str(gens), "--metrics", "mutation", "--max-mutants", "5", "--workers", "1"])
    assert status != 0
    err = capsys.readouterr().err
    assert "sandbox cannot run" in err and "sandbox worker did not start" in err
    for part in cause:
        assert part in err, err


def test_env_var_selects_the_interpreter(monkeypatch, python_without_pytest):
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", None)
    monkeypatch.setenv("FASTDISTILL_SANDBOX_PYTHON", python_without_pytest)
    assert sandbox.sandbox_python() == python_without_pytest
    with pytest.raises(SandboxUnavailableError, match="cannot import pytest"):
        run_tests(CODE, GOOD)
    monkeypatch.delenv("FASTDISTILL_SANDBOX_PYTHON")
    assert sandbox.sandbox_python() == sys.executable


def test_ordinary_outcomes_stay_scores():
    """Failing, crashing and hanging test files are scores; nothing is raised."""
    failing = run_tests(CODE, BAD)
    assert failing.completed and failing.failed == 1 and not failing.ok
    crash = "import os\nfrom solution import add\n\ndef test_add():\n    os._exit(1)\n"
    crashed = run_tests(CODE, crash)
    assert not crashed.ok and not crashed.completed
    hang = "from solution import add\n\ndef test_add():\n    while True:\n        pass\n"
    hung = run_tests(CODE, hang, timeout_s=1.5)
    assert hung.timed_out and not hung.ok
    res = mutation_score(CODE, BAD, max_mutants=5)
    assert not res.baseline_ok and res.kill_rate == 0.0 and "fail on the original code" in res.reason
    ok = mutation_score(CODE, GOOD, max_mutants=5)
    assert ok.baseline_ok and ok.kill_rate > 0


def test_error_is_picklable_for_datasets_worker_processes():
    import pickle

    err = pickle.loads(pickle.dumps(SandboxUnavailableError("sandbox worker did not start: x")))
    assert isinstance(err, SandboxUnavailableError) and "x" in str(err)


def test_no_workdir_is_left_behind(no_pytest):
    import tempfile

    before = {p.name for p in Path(tempfile.gettempdir()).glob(f"fastdistill-sb-{os.getpid()}-*")}
    with pytest.raises(SandboxUnavailableError):
        run_tests(CODE, GOOD)
    after = {p.name for p in Path(tempfile.gettempdir()).glob(f"fastdistill-sb-{os.getpid()}-*")}
    assert after <= before


def test_an_interpreter_in_a_venv_under_tmp_sees_its_own_site_packages(monkeypatch, tmp_path):
    """The sealed view has its own /tmp; a virtual environment made under the host's /tmp (its
    site-packages included) must still be visible inside it, not hidden by that tmpfs."""
    base = getattr(sys, "_base_executable", sys.executable)
    env_dir = tmp_path / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert site.startswith(str(tmp_path)), site
    here = [p for p in sys.path if p.endswith("site-packages")]  # pytest, for the worker
    Path(site, "fastdistill_from_this_venv.pth").write_text("\n".join(here) + "\n", encoding="utf-8")
    Path(site, "fastdistill_probe_module.py").write_text("VALUE = 41\n", encoding="utf-8")
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", python)
    tests = "import fastdistill_probe_module\nfrom solution import add\n\ndef test_it():\n" \
            "    assert add(fastdistill_probe_module.VALUE, 1) == 42\n"
    run = run_tests(CODE, tests)
    assert run.ok, run.reason + run.output
