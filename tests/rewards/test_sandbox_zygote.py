"""Pre-forked, warmed-up zygotes (``sandbox.PREFORK_ZYGOTE``) must give exactly the results of a zygote
forked when the pair arrives, and the warm-up must leave no trace the tests could see; a pair's only
job run in its zygote (``sandbox.INLINE_SINGLE_JOB``) must give the results of a job child."""

import re
import time

import pytest

from fastdistill.rewards import close_idle_workers, run_tests
from fastdistill.rewards import sandbox as _sandbox

pytestmark = pytest.mark.skipif(not _sandbox.sandbox_capabilities()["namespaces"],
                                reason="workers serve one pair each without namespaces: nothing is pre-forked")

CODE = "def add(a, b):\n    return a + b\n"
IDLE_S = 0.35  # longer than _child._WARM_AFTER_S: the spare has warmed up when the next pair comes

FILES = [
    "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n",
    "from solution import add\n\ndef test_bad():\n    assert add(1, 2) == 4\n\n"
    "def test_ok():\n    assert add(0, 0) == 0\n",
    "import pytest\nfrom solution import add\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('x')\n\n"
    "def test_uses(broken):\n    pass\n\n@pytest.mark.skip(reason='no')\ndef test_skip():\n    pass\n",
    "from solution import add\n\nclass TestAdd:\n    def test_a(self):\n        assert add(2, 2) == 4\n\n"
    "import pytest\n\n@pytest.mark.parametrize('a,b,c', [(1, 1, 2), (2, 3, 6)])\ndef test_p(a, b, c):\n"
    "    assert add(a, b) == c\n",
    "from solution import missing\n\ndef test_x():\n    pass\n",
    "def test_syntax(:\n    pass\n",
    "from solution import add\n\ndef test_uninstalled_warning():\n    import warnings\n"
    "    warnings.warn('careful', UserWarning)\n    assert add(1, 1) == 2\n",
]

TRACE_TESTS = '''import os
import sys


def test_no_trace_of_the_warm_up(request):
    assert not [m for m in sys.modules if "fastdistill_warm" in m]
    here = os.path.dirname(os.path.abspath(__file__))
    workdir = os.path.dirname(here)
    assert [p for p in sys.path if p.startswith(workdir)] == [here]
    assert not [p for p in sys.path_importer_cache if p.startswith(workdir) and p != here and p != workdir]
    assert sorted(e for e in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, e))) == [os.path.basename(here)]
    assert len(request.session.items) == 1 and request.session.testscollected == 1
    assert request.node.nodeid.endswith("::test_no_trace_of_the_warm_up")
'''


def _normalised(run):
    def norm(text):
        text = re.sub(r"/[^\s:'\"]*fastdistill-sb-[0-9]+-[A-Za-z0-9_]+", "<workdir>", text)
        return re.sub(r"\bp[0-9a-f]{16}\b", "<pair>", re.sub(r"0x[0-9a-f]+", "0x", text))

    return (run.passed, run.failed, run.errors, run.skipped, run.completed, run.timed_out, norm(run.reason),
            sorted((norm(t.nodeid), t.outcome, norm(t.message)) for t in run.tests))


def _runs(prefork, idle_s, monkeypatch):
    monkeypatch.setattr(_sandbox, "PREFORK_ZYGOTE", prefork)
    close_idle_workers()
    try:
        run_tests(CODE, FILES[0])  # start the worker
        runs = []
        for tests in FILES:
            time.sleep(idle_s)
            runs.append(_normalised(run_tests(CODE, tests)))
        return runs
    finally:
        close_idle_workers()


def test_warm_spare_gives_the_results_of_a_fresh_zygote(monkeypatch):
    fresh = _runs(False, 0.0, monkeypatch)
    assert _runs(True, IDLE_S, monkeypatch) == fresh  # a spare that warmed up while the caller was idle
    assert _runs(True, 0.0, monkeypatch) == fresh  # back-to-back calls: a spare that had no time to warm up


def _raw(tests, idle_s=0.0):
    time.sleep(idle_s)
    spec = {"code": CODE, "tests": tests, "module_name": "solution", "write_module": True, "timeout_s": 10.0,
            "jobs": [{"source": None, "stop_first": False, "timeout_s": 9.5}], "gate": None}
    return _sandbox.execute_pairs([spec], memory_mb=1024)[0]


def test_the_warm_up_leaves_no_trace(monkeypatch):
    monkeypatch.setattr(_sandbox, "PREFORK_ZYGOTE", True)
    close_idle_workers()
    try:
        assert _raw(FILES[0]).zygote == "fresh"  # a new worker forks nothing before its first pair
        raw = _raw(TRACE_TESTS, IDLE_S)
        assert raw.zygote == "warm"  # the pair did run on a warmed-up spare
        run = _sandbox._to_test_run(raw, 1)
        assert run.ok and run.passed == 1, run.reason + "".join(t.message for t in run.tests)
    finally:
        close_idle_workers()


def test_without_prefork_every_zygote_is_fresh(monkeypatch):
    monkeypatch.setattr(_sandbox, "PREFORK_ZYGOTE", False)
    close_idle_workers()
    try:
        assert [_raw(FILES[0], idle).zygote for idle in (0.0, IDLE_S)] == ["fresh", "fresh"]
    finally:
        close_idle_workers()


CGROUP_TESTS = '''def test_in_the_workers_cgroups():
    lines = open("/proc/self/cgroup").read().splitlines()
    for controller in CONTROLLERS:
        (line,) = [x for x in lines if controller in x.split(":")[1].split(",")]
        assert "/fastdistill-" in line, line
'''


def test_every_zygote_is_in_the_workers_cgroups(monkeypatch):
    """A spare is forked by the worker; it (and what it starts) must be inside the worker's cgroups."""
    caps = _sandbox.sandbox_capabilities()
    controllers = [name for name, key in (("pids", "cgroup"), ("memory", "memory_cgroup"))
                   if caps.get(key) and caps.get("memory_cgroup_version") != 2]
    if not controllers:
        pytest.skip("no (v1) cgroups are created on this host")
    tests = f"CONTROLLERS = {controllers!r}\n\n\n" + CGROUP_TESTS
    monkeypatch.setattr(_sandbox, "PREFORK_ZYGOTE", True)
    close_idle_workers()
    try:
        kinds = []
        for idle in (0.0, 0.0, IDLE_S):  # a fresh worker's first pair, a spare, a warmed-up spare
            raw = _raw(tests, idle)
            kinds.append(raw.zygote)
            run = _sandbox._to_test_run(raw, 1)
            assert run.ok, run.reason + "".join(t.message for t in run.tests)
        assert kinds == ["fresh", "spare", "warm"]
    finally:
        close_idle_workers()


HOSTILE = [
    ("from solution import add\nimport time\n\ndef test_a():\n    assert add(1, 1) == 2\n\n"
     "def test_b():\n    assert True\n\ndef test_hang():\n    while True:\n        pass\n\n"
     "def test_after():\n    pass\n", 2.0),
    ("import time\n\ndef test_sleep():\n    time.sleep(30)\n", 1.5),
    ("import os\n\ndef test_first():\n    pass\n\ndef test_exit():\n    os._exit(3)\n", 10.0),
    ("import os\n\ndef test_exit0():\n    os._exit(0)\n", 10.0),
    ("import ctypes\n\ndef test_segv():\n    ctypes.string_at(0)\n", 10.0),
    ("import pytest\n\ndef test_pytest_exit():\n    pytest.exit('bye')\n", 10.0),
    ("def test_interrupt():\n    raise KeyboardInterrupt\n", 10.0),
    ("import sys\n\ndef test_sys_exit():\n    sys.exit(0)\n", 10.0),
    ("def test_memory():\n    x = bytearray(4 * 1024 ** 3)\n", 10.0),
    ("import pytest\n\n@pytest.mark.parametrize('i', range(300))\ndef test_many(i):\n"
     "    assert i % 7, 'x' * 1400\n", 20.0),
    ("import os, signal\n\ndef test_kill_self():\n    os.kill(os.getpid(), signal.SIGKILL)\n", 10.0),
]


def _hostile_runs(inline, monkeypatch):
    monkeypatch.setattr(_sandbox, "INLINE_SINGLE_JOB", inline)
    close_idle_workers()
    try:
        runs = []
        for tests, timeout_s in HOSTILE:
            run = run_tests(CODE, tests, timeout_s=timeout_s, memory_mb=1024)
            runs.append(_normalised(run)[:4] + (run.completed, run.timed_out, run.out_of_memory,
                                                re.sub(r"after \d+\.\ds", "after <t>s", _normalised(run)[6]),
                                                [t[:2] for t in _normalised(run)[7]]))
        return runs
    finally:
        close_idle_workers()


def test_a_single_job_in_the_zygote_gives_the_results_of_a_job_child(monkeypatch):
    forked = _hostile_runs(False, monkeypatch)
    inline = _hostile_runs(True, monkeypatch)
    for (tests, _), a, b in zip(HOSTILE, forked, inline):
        assert b == a, tests


def test_repeats_and_mutants_still_fork_a_child_per_job(monkeypatch):
    """Only a pair's single plain job runs in its zygote: repeats each get a fresh process."""
    monkeypatch.setattr(_sandbox, "INLINE_SINGLE_JOB", True)
    tests = ("import os\n\n"
             "def test_fresh_process():\n    assert os.environ.get('FD_MARK') is None\n"
             "    os.environ['FD_MARK'] = '1'\n")
    run = run_tests(CODE, tests, repeats=3)
    assert run.ok and not run.flaky and len(run.repeat_durations_s) == 3


def test_a_pair_that_arrives_during_the_warm_up_gets_a_fresh_zygote_and_a_clean_directory(monkeypatch):
    """Calls ~0.1-0.2 s apart land while the spare warms up: it is replaced, and its directory removed."""
    monkeypatch.setattr(_sandbox, "PREFORK_ZYGOTE", True)
    tests = ("import os\n\ndef test_clean():\n    here = os.path.dirname(os.path.abspath(__file__))\n"
             "    workdir = os.path.dirname(here)\n"
             "    assert sorted(os.listdir(workdir)) == sorted(['fastdistill_pytest.ini', os.path.basename(here)])\n")
    close_idle_workers()
    try:
        kinds = set()
        _raw(tests)
        for i in range(16):
            raw = _raw(tests, 0.1 + 0.006 * i)
            kinds.add(raw.zygote)
            run = _sandbox._to_test_run(raw, 1)
            assert run.ok, run.reason + "".join(t.message for t in run.tests)
        assert kinds <= {"fresh", "spare", "warm"}
    finally:
        close_idle_workers()
