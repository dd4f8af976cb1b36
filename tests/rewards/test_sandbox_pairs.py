"""A sandbox worker serves many (code, tests) pairs: nothing one pair starts or writes may reach the next."""

import pytest

from fastdistill.rewards import sandbox_capabilities
from fastdistill.rewards.sandbox import _to_test_run, execute_pairs

CODE = "def add(a, b):\n    return a + b\n"

LEAVE_BEHIND = (
    "import os, time\n\n"
    "def test_leave_behind():\n"
    "    open('../planted.txt', 'w').write('x')\n"
    "    open('solution_helper.py', 'w').write('X = 1')\n"
    "    if os.fork() == 0:\n"
    "        os.setsid()\n"
    "        while True:\n"
    "            time.sleep(0.05)\n"
    "    assert True\n"
)

CHECK_CLEAN = (
    "import ctypes, os, time\n"
    "from solution import add\n\n"
    "def test_no_files_from_the_previous_pair():\n"
    "    entries = os.listdir('..')\n"
    "    assert 'planted.txt' not in entries\n"
    "    assert [e for e in entries if os.path.isdir(os.path.join('..', e))] == [os.path.basename(os.getcwd())]\n\n"
    "def test_no_processes_from_the_previous_pair():\n"
    "    time.sleep(0.2)\n"
    "    assert not os.path.exists('../alive.txt')\n"
    "    kill = ctypes.CDLL(None, use_errno=True).kill\n"  # PIDs are those of our own PID namespace
    "    alive = {pid for pid in range(1, 2000) if kill(pid, 0) == 0}\n"
    "    assert alive <= {1, os.getppid(), os.getpid()}, alive\n\n"
    "def test_add():\n    assert add(2, 2) == 4\n"
)


def _spec(tests):
    return {"code": CODE, "tests": tests, "module_name": "solution", "write_module": True,
            "jobs": [{"source": None, "stop_first": False, "timeout_s": 5.0}], "timeout_s": 8.0}


@pytest.mark.skipif(not sandbox_capabilities()["namespaces"], reason="pairs share a worker only with namespaces")
def test_pairs_served_by_one_worker_are_isolated():
    raws = execute_pairs([_spec(LEAVE_BEHIND), _spec(CHECK_CLEAN), _spec(CHECK_CLEAN)], memory_mb=1024, n_workers=1)
    first = _to_test_run(raws[0], 1)
    assert first.completed and first.passed == 1, first.reason
    for raw in raws[1:]:
        run = _to_test_run(raw, 1)
        assert run.ok and run.passed == 3, run.reason
