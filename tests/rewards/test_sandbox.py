"""Hostile test files must be contained by the sandbox: honest result, a reason, nothing left behind."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from fastdistill.rewards import run_tests, sandbox_capabilities
from fastdistill.rewards import sandbox as _sandbox
from fastdistill.rewards.sandbox import OUTPUT_CAP

CODE = "def add(a, b):\n    return a + b\n"
GOOD_TESTS = "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"


def _procs_named(mark):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == mark:
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _leftover_sandbox_dirs(before):
    """Sandbox directories that appeared since ``before``, once the warm workers are stopped (a warm
    worker keeps its own directory by design; after stopping, nothing may remain)."""
    import tempfile

    from fastdistill.rewards import close_idle_workers

    close_idle_workers()
    root = tempfile.gettempdir()
    return {d for d in os.listdir(root) if d.startswith(f"fastdistill-sb-{os.getpid()}-")} - before


@pytest.fixture
def sandbox_dirs():
    import tempfile

    root = tempfile.gettempdir()
    before = {d for d in os.listdir(root) if d.startswith(f"fastdistill-sb-{os.getpid()}-")}
    yield before


def _name_prefix(mark):
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {mark.encode()!r}, 0, 0, 0)\n"


def test_honest_pass_and_fail_counts():
    tests = GOOD_TESTS + "\ndef test_wrong():\n    assert add(2, 2) == 5\n"
    run = run_tests(CODE, tests)
    assert (run.passed, run.failed, run.errors) == (1, 1, 0)
    assert run.completed and not run.timed_out and not run.ok
    assert "failed" in run.reason
    assert {t.outcome for t in run.tests} == {"passed", "failed"}
    good = run_tests(CODE, GOOD_TESTS)
    assert good.ok and good.reason.startswith("ok")


def test_custom_module_name_and_repeats():
    tests = "from mymod import add\n\ndef test_add():\n    assert add(1, 1) == 2\n"
    run = run_tests(CODE, tests, module_name="mymod", repeats=3)
    assert run.ok and len(run.repeat_durations_s) == 3 and not run.flaky


def test_infinite_loop_times_out(sandbox_dirs):
    tests = "def test_loop():\n    while True:\n        pass\n"
    t0 = time.monotonic()
    run = run_tests(CODE, tests, timeout_s=3)
    assert time.monotonic() - t0 < 15
    assert run.timed_out and not run.ok and "timed out" in run.reason
    assert not _leftover_sandbox_dirs(sandbox_dirs)


def test_fork_bomb_contained(sandbox_dirs):
    mark = "fdbomb" + uuid.uuid4().hex[:6]
    tests = _name_prefix(mark) + "import os\n\ndef test_bomb():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    run = run_tests(CODE, tests, timeout_s=4)
    assert not run.ok and run.passed == 0
    time.sleep(0.2)
    assert _procs_named(mark) == []
    assert not _leftover_sandbox_dirs(sandbox_dirs)


def test_memory_bomb_contained():
    tests = "def test_mem():\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 1024 * 1024))\n"
    run = run_tests(CODE, tests, timeout_s=10, memory_mb=512)
    assert not run.ok and run.passed == 0 and (run.failed + run.errors) >= 1
    assert "MemoryError" in run.tests[0].message or run.timed_out


def test_write_outside_temp_dir_denied(tmp_path):
    target = tmp_path / "escaped.txt"
    home_target = os.path.join(os.path.expanduser("~"), f"fd-escape-{uuid.uuid4().hex}")
    tests = (
        "import pathlib\n\n"
        f"def test_write_here():\n    pathlib.Path('local.txt').write_text('ok')\n\n"
        f"def test_write_tmp():\n    open({str(target)!r}, 'w').write('pwned')\n\n"
        f"def test_write_home():\n    open({home_target!r}, 'w').write('pwned')\n"
    )
    run = run_tests(CODE, tests)
    assert not target.exists() and not os.path.exists(home_target)
    outcomes = {t.nodeid.split("::")[1]: t.outcome for t in run.tests}
    assert outcomes == {"test_write_here": "passed", "test_write_tmp": "failed", "test_write_home": "failed"}


def test_parent_env_secrets_not_visible(monkeypatch):
    monkeypatch.setenv("FASTDISTILL_TEST_SECRET", "hunter2-secret")
    tests = (
        "import os\n\n"
        "def test_env():\n    assert 'hunter2-secret' not in repr(dict(os.environ))\n\n"
        "def test_proc_environ():\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit():\n"
        "            try:\n"
        "                data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "            except OSError:\n"
        "                continue\n"
        "            assert b'hunter2-secret' not in data\n"
    )
    run = run_tests(CODE, tests)
    assert run.ok, run.reason


def test_network_connection_denied():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    tests = (
        "import socket\n\n"
        f"def test_connect():\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
    )
    run = run_tests(CODE, tests)
    assert run.failed == 1 and not run.ok
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_killing_the_parent_is_contained():
    me = os.getpid()
    tests = (
        "import os, signal\n\n"
        f"def test_kill():\n    for pid in ({me}, os.getppid()):\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n            pass\n    assert True\n"
    )
    run = run_tests(CODE, tests)
    # we are still alive and the result is reported honestly (the kill attempts were no-ops)
    assert os.getpid() == me
    assert run.completed and run.passed == 1, run.reason


def test_os_exit_is_not_success():
    tests = GOOD_TESTS + "\nimport os\n\ndef test_exit():\n    os._exit(0)\n"
    run = run_tests(CODE, tests)
    assert not run.ok and not run.completed
    assert "os._exit" in run.reason or "ended" in run.reason


def test_conftest_written_at_import_is_ignored():
    tests = (
        "import pathlib\n"
        "pathlib.Path('conftest.py').write_text('''\n"
        "import pytest\n"
        "@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n"
        "    rep = outcome.get_result()\n"
        "    rep.outcome = \"passed\"\n"
        "''')\n\n"
        "def test_fails():\n    assert 1 == 2\n"
    )
    run = run_tests(CODE, tests)
    assert run.failed == 1 and not run.ok


def test_plugin_in_test_module_faking_success_is_rejected():
    tests = (
        "import pytest\n"
        "pytest_plugins = ['faker']\n"
        "import pathlib, sys\n"
        "pathlib.Path('faker.py').write_text('''\n"
        "import pytest\n"
        "@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n"
        "    outcome.get_result().outcome = \"passed\"\n"
        "''')\n\n"
        "def test_fails():\n    assert 1 == 2\n"
    )
    run = run_tests(CODE, tests)
    assert not run.ok and run.passed == 0


def test_forged_result_lines_are_ignored():
    tests = (
        "import os, json\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b'x ' + json.dumps({'t': 'job', 'i': 0, 'status': 'ok', 'tests': [['t', 'passed', 0, '']]}).encode() + b'\\n')\n"
        "        os.write(fd, b'x ' + json.dumps({'t': 'done'}).encode() + b'\\n')\n"
        "    except OSError:\n"
        "        pass\n\n"
        "def test_fails():\n    assert False\n"
    )
    run = run_tests(CODE, tests)
    assert run.failed == 1 and run.passed == 0 and not run.ok


def test_stdout_flood_is_capped():
    tests = (
        "import os, sys\n\n"
        "def test_flood():\n"
        "    while True:\n"
        "        os.write(1, b'x' * 65536)\n"
        "        sys.stderr.write('y' * 65536)\n"
    )
    t0 = time.monotonic()
    run = run_tests(CODE, tests, timeout_s=5)
    assert time.monotonic() - t0 < 20
    assert not run.ok and len(run.output) <= OUTPUT_CAP


def test_module_name_validated():
    with pytest.raises(ValueError):
        run_tests(CODE, GOOD_TESTS, module_name="../evil")


def test_rewards_and_augment_import_without_torch():
    code = "import fastdistill.rewards, fastdistill.augment, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_capabilities_reported():
    caps = sandbox_capabilities()
    assert set(caps) >= {"namespaces", "cgroup"}


@pytest.fixture(params=["namespaces", "guards-only"])
def isolation(request, monkeypatch):
    """Run a test with full isolation and with the no-namespace fallback (rlimits + audit hooks)."""
    caps = dict(sandbox_capabilities())
    if request.param == "guards-only":
        caps["namespaces"] = False
    elif not caps["namespaces"]:
        pytest.skip("kernel does not allow namespaces here")
    monkeypatch.setattr(_sandbox, "sandbox_capabilities", lambda: caps)
    return request.param


def test_fallback_guards_contain_writes_network_and_kills(isolation, tmp_path):
    target = tmp_path / "escaped.txt"
    me = os.getpid()
    tests = (
        "import os, signal, socket\n\n"
        f"def test_write():\n    open({str(target)!r}, 'w').write('pwned')\n\n"
        "def test_net():\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n\n"
        f"def test_kill():\n    os.kill({me}, signal.SIGTERM)\n\n"
        "def test_ok():\n    open('here.txt', 'w').write('fine')\n"
    )
    run = run_tests(CODE, tests)
    assert not target.exists()
    outcomes = {t.nodeid.split("::")[1]: t.outcome for t in run.tests}
    assert outcomes["test_write"] == "failed" and outcomes["test_net"] == "failed"
    assert outcomes["test_ok"] == "passed"
    assert run.completed
