"""Containment: nothing of the host is readable, writable or left changed by hostile tests.

Each hostile test file is written so that it *passes* only if the attack worked; the assertions
here say the attack failed (and, for writes and IPC, that the host is unchanged). Layers the host
does not allow are skipped with the layer's name (see ``sandbox_capabilities``).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from fastdistill.rewards import (
    SandboxSettings,
    close_idle_workers,
    run_tests,
    sandbox_capabilities,
)
from fastdistill.rewards import sandbox as _sandbox
from fastdistill.rewards.sandbox import run_tests_many

CODE = "def add(a, b):\n    return a + b\n"
CAPS = sandbox_capabilities()
needs_memory_cgroup = pytest.mark.skipif(not CAPS.get("memory_cgroup"), reason="no memory cgroup on this host")


def _sealed() -> bool:
    run_tests(CODE, "def test_x():\n    pass\n")
    workers = [w for w in _sandbox._IDLE if w.owner_pid == os.getpid()]
    return bool(workers) and workers[0].view == "sealed"


@pytest.fixture(scope="module")
def sealed():
    if not CAPS["namespaces"] or not _sealed():
        pytest.skip("the sealed view is not available on this host")
    return True


@pytest.fixture()
def planted(tmp_path):
    """Secrets where a trainer keeps them: $HOME, the HF token path, an ssh key (removed afterwards)."""
    home = Path(os.path.expanduser("~"))
    marker = uuid.uuid4().hex
    made = []
    for rel in (f"fd-secret-{marker}.txt", f".cache/huggingface/fd-token-{marker}",
                f".ssh/fd-key-{marker}"):
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"SECRET-{marker}\n")
        path.chmod(0o600)
        made.append(path)
    hf_token = home / ".cache" / "huggingface" / "token"
    if not hf_token.exists():
        hf_token.write_text(f"hf_SECRET-{marker}\n")
        made.append(hf_token)
    yield marker, [str(p) for p in made]
    for path in made:
        path.unlink(missing_ok=True)


def _attack(tests: str, **kw):
    run = run_tests(CODE, tests, **kw)
    return run, run.output + "".join(t.message for t in run.tests)


def test_planted_secrets_cannot_be_read(sealed, planted):
    marker, paths = planted
    tests = "import pytest\n\n"
    for i, path in enumerate(paths):
        tests += f"def test_read_{i}():\n    assert 'SECRET' in open({path!r}).read()\n\n"  # marker in the name only
    run, text = _attack(tests)
    assert run.passed == 0 and run.failed == len(paths)
    assert f"SECRET-{marker}" not in text


def test_home_root_and_other_dirs_are_not_listed(sealed, planted):
    marker, _ = planted
    tests = ("import os\n\ndef test_list():\n"
             "    seen = []\n"
             "    for d in ('/root', '/home', os.path.expanduser('~'), '/etc', '/work', '/var'):\n"
             "        try:\n            seen += os.listdir(d)\n        except OSError:\n            pass\n"
             f"    m = {marker[:16]!r} + {marker[16:]!r}\n"  # (the whole marker never appears in the source)
             "    assert any(m in name for name in seen) or 'passwd' in seen or 'wt' in seen\n")
    run, text = _attack(tests)
    assert run.failed == 1 and run.passed == 0
    assert marker not in text
    # The root holds the view's own dirs plus the first component of each path to the Python
    # installation (a checkout may live under /work, /check, /root, ...: those exist only as paths).
    install = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, sys.executable,
               os.path.realpath(sys.executable), *(p for p in sys.path if os.path.isabs(p))}
    allowed = {"usr", "lib", "lib64", "tmp", "dev", "proc"}
    allowed |= {Path(p).parts[1] for p in install if len(Path(p).parts) > 1}
    probe = ("import os\n\ndef test_root():\n"
             f"    extra = set(os.listdir('/')) - set({sorted(allowed)!r})\n"
             "    assert not extra, extra\n"
             "    assert not os.path.exists('/etc/passwd') and not os.path.exists('/etc')\n"
             f"    assert {'home' in allowed!r} or not os.path.exists('/home')\n")
    assert "etc" not in allowed and "var" not in allowed
    run = run_tests(CODE, probe)
    assert run.ok, run.tests


def test_other_processes_are_invisible(sealed):
    marker = "fdvisible" + uuid.uuid4().hex[:8]
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker],
                            env={**os.environ, "FD_ENV_MARKER": marker})
    try:
        tests = ("import os\n\ndef test_scan():\n"
                 "    found = []\n"
                 "    for pid in os.listdir('/proc'):\n"
                 "        if not pid.isdigit():\n            continue\n"
                 "        for name in ('cmdline', 'environ'):\n"
                 "            try:\n"
                 "                found.append(open(f'/proc/{pid}/{name}', 'rb').read())\n"
                 "            except OSError:\n                pass\n"
                 f"    assert any({marker.encode()!r} in blob for blob in found)\n"
                 "\ndef test_few_pids():\n"
                 "    assert len([p for p in os.listdir('/proc') if p.isdigit()]) > 20\n")
        run, _ = _attack(tests)
        assert run.passed == 0 and run.failed == 2
        assert host.poll() is None  # and it was not touched
    finally:
        host.kill()
        host.wait()


def test_writes_outside_the_job_dir_do_not_reach_the_host(sealed):
    name = f"fd-escape-{uuid.uuid4().hex}"
    targets = [os.path.join(tempfile.gettempdir(), name), os.path.join(os.path.expanduser("~"), name),
               os.path.join(os.path.dirname(sys.executable), name), os.path.join(sys.prefix, name)]
    tests = "import os\n\n"
    for i, target in enumerate(targets):
        tests += (f"def test_write_{i}():\n    with open({target!r}, 'w') as fh:\n        fh.write('x')\n"
                  f"    assert os.path.exists({target!r})\n\n")
    run_tests(CODE, tests)
    for target in targets:
        assert not os.path.exists(target), target


def test_sysv_shared_memory_does_not_outlive_the_sandbox(sealed):
    key = int(uuid.uuid4().hex[:7], 16)
    tests = ("import ctypes\n\ndef test_shm():\n"
             "    libc = ctypes.CDLL(None, use_errno=True)\n"
             f"    shmid = libc.shmget({key}, 1 << 20, 0o1000 | 0o666)\n"
             "    assert shmid >= 0\n")
    run = run_tests(CODE, tests)
    assert run.ok  # the segment was created inside ...
    with open("/proc/sysvipc/shm") as fh:
        keys = [int(line.split()[0]) for line in fh.read().splitlines()[1:]]
    assert key not in keys  # ... but never in the host's IPC namespace


def test_nothing_passes_from_one_pair_to_the_next_in_a_warm_worker(sealed):
    """One worker runs both pairs: what the first leaves in the view's /tmp, /dev/shm or its IPC namespace is
    gone when the second runs."""
    key = int(uuid.uuid4().hex[:7], 16)
    leave = ("import ctypes, os\n\ndef test_leave():\n"
             "    os.makedirs('/tmp/fd-dir', exist_ok=True)\n"
             "    for path in ('/tmp/fd-leak', '/tmp/fd-dir/inner', '/dev/shm/fd-leak'):\n"
             "        with open(path, 'w') as fh:\n            fh.write('x')\n"
             "    libc = ctypes.CDLL(None, use_errno=True)\n"
             f"    assert libc.shmget({key}, 4096, 0o1000 | 0o666) >= 0\n"
             f"    assert libc.semget({key}, 1, 0o1000 | 0o666) >= 0\n"
             f"    assert libc.msgget({key}, 0o1000 | 0o666) >= 0\n")
    find = ("import ctypes, os\n\ndef test_find():\n"
            "    left = [p for p in ('/tmp/fd-leak', '/tmp/fd-dir', '/dev/shm/fd-leak') if os.path.exists(p)]\n"
            "    assert left == []\n"
            "    libc = ctypes.CDLL(None, use_errno=True)\n"
            f"    assert libc.shmget({key}, 4096, 0o666) == -1\n"
            f"    assert libc.semget({key}, 1, 0o666) == -1\n"
            f"    assert libc.msgget({key}, 0o666) == -1\n")
    first, second = run_tests_many([CODE, CODE], [leave, find], n_workers=1)
    assert first.ok, first.output
    assert second.ok, second.output + "".join(t.message for t in second.tests)


def test_oom_score_adj_is_1000_and_cannot_be_lowered(sealed):
    tests = ("def test_read():\n    assert open('/proc/self/oom_score_adj').read().strip() == '1000'\n\n"
             "def test_lower():\n    with open('/proc/self/oom_score_adj', 'w') as fh:\n        fh.write('-1000')\n")
    run = run_tests(CODE, tests)
    outcomes = {t.nodeid.rsplit('::', 1)[1]: t.outcome for t in run.tests}
    assert outcomes == {"test_read": "passed", "test_lower": "failed"}


def test_nested_unshare_cannot_remount_read_write(sealed):
    target = os.path.join(sys.prefix, f"fd-remount-{uuid.uuid4().hex}")
    tests = ("import ctypes, os\n\ndef test_remount():\n"
             "    libc = ctypes.CDLL(None, use_errno=True)\n"
             "    assert libc.unshare(0x10000000 | 0x00020000) == 0, ctypes.get_errno()\n"  # NEWUSER | NEWNS
             f"    prefix = {sys.prefix!r}.encode()\n"
             "    assert libc.mount(None, prefix, None, 32 | 4096, None) == 0, ctypes.get_errno()\n"
             f"    open({target!r}, 'w').write('x')\n")
    run = run_tests(CODE, tests)
    assert run.failed == 1 and not run.ok
    assert not os.path.exists(target)


UNPRIVILEGED = 65534


def _may_map_unprivileged_ids() -> bool:
    """Whether this process may map uid/gid 65534 into a child user namespace, as the unprivileged-uid
    layer needs (independently of the sandbox's own probe): 65534 is mapped in our user namespace and
    we hold CAP_SETUID and CAP_SETGID (a root host)."""
    with open("/proc/self/status") as fh:
        effective = int(next(line for line in fh if line.startswith("CapEff:")).split()[1], 16)
    if not (effective >> 6) & 1 or not (effective >> 7) & 1:  # CAP_SETGID, CAP_SETUID
        return False
    for kind in ("uid", "gid"):
        with open(f"/proc/self/{kind}_map") as fh:
            ranges = [[int(x) for x in line.split()] for line in fh]
        if not any(outer <= UNPRIVILEGED < outer + count for _, outer, count in ranges):
            return False
    return True


def _skip_unless_dropped(python=None):
    """Skip (naming the layer and why) when the worker could not become the unprivileged uid because
    the view it got does not let that uid read the Python installation (an environment limitation)."""
    workers = [w for w in _sandbox._IDLE if w.owner_pid == os.getpid() and (python is None or w.limits[2] == python)]
    note = getattr(workers[0], "uid_note", "") if workers else ""
    if "cannot read" in note:
        pytest.skip(f"unprivileged uid layer not enforced with this view: {note}")


@pytest.fixture(scope="module")
def unprivileged():
    if not CAPS["namespaces"]:
        pytest.skip("unprivileged uid layer: no namespaces on this host (tests run as the trainer's uid)")
    if not _may_map_unprivileged_ids():
        pytest.skip("unprivileged uid layer: this host may not map uid/gid 65534 into a user namespace (not root)")
    run_tests(CODE, "def test_x():\n    pass\n")
    _skip_unless_dropped()
    return UNPRIVILEGED


def test_tests_run_as_an_unprivileged_uid(unprivileged):
    tests = ("import os\nimport pytest\n\n"
             "def test_not_root():\n"
             "    assert os.getuid() != 0 and os.geteuid() != 0\n"
             "    assert os.getgid() != 0 and os.getegid() != 0 and 0 not in os.getgroups()\n\n"
             "def test_cannot_become_root():\n"
             "    for become in (os.setuid, os.seteuid, os.setgid, os.setegid):\n"
             "        with pytest.raises(PermissionError):\n            become(0)\n"
             "    with pytest.raises(PermissionError):\n        os.setresuid(0, 0, 0)\n"
             "    with pytest.raises(PermissionError):\n        os.setgroups([0])\n\n"
             "def test_worker_environ_is_off_limits():\n"
             "    with pytest.raises(PermissionError):\n        open('/proc/1/environ', 'rb').read()\n")
    run = run_tests(CODE, tests)
    assert run.ok and run.passed == 3, [(t.nodeid, t.outcome, t.message[-500:]) for t in run.tests]


@pytest.fixture(scope="module")
def python_beside_a_secret(tmp_path_factory):
    """A virtual environment that sees this one's site-packages (pytest), with a file only root may
    read (0600) in its own site-packages: the sealed view shows that directory read-only."""
    base = getattr(sys, "_base_executable", sys.executable)
    env_dir = tmp_path_factory.mktemp("secretvenv") / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True)
    (site,) = (env_dir / "lib").glob("python*/site-packages")
    (site / "fd_outer.pth").write_text("".join(p + "\n" for p in sys.path if p.endswith("site-packages")))
    marker = uuid.uuid4().hex
    secret = site / f"fd-secret-{marker}.txt"
    secret.write_text(f"SECRET-{marker}\n")
    secret.chmod(0o600)
    assert secret.stat().st_uid == 0
    return str(env_dir / "bin" / "python"), str(secret), marker


def test_root_only_file_in_the_view_cannot_be_read(unprivileged, python_beside_a_secret, monkeypatch):
    python, secret, marker = python_beside_a_secret
    public = os.path.join(os.path.dirname(secret), "fd_outer.pth")  # root's too, but world-readable (0644)
    monkeypatch.setattr(_sandbox, "SANDBOX_PYTHON", python)
    try:
        tests = ("import errno, os\nimport pytest\n\n"
                 f"def test_read_secret():\n    assert 'SECRET' in open({secret!r}).read()\n\n"
                 f"def test_read_public_file_beside_it():\n    assert open({public!r}).read()\n\n"
                 "def test_open_public_file_for_writing():\n"
                 "    with pytest.raises(OSError) as info:\n"
                 f"        os.open({public!r}, os.O_WRONLY)\n"
                 "    assert info.value.errno in (errno.EACCES, errno.EPERM), info.value\n")  # root: EROFS only
        run, text = _attack(tests)
        _skip_unless_dropped(python)
        outcomes = {t.nodeid.rsplit("::", 1)[1]: t.outcome for t in run.tests}
        assert outcomes == {"test_read_secret": "failed", "test_read_public_file_beside_it": "passed",
                            "test_open_public_file_for_writing": "passed"}, [t.message[-300:] for t in run.tests]
        assert "PermissionError" in text and f"SECRET-{marker}" not in text
    finally:
        close_idle_workers()


@needs_memory_cgroup
def test_multi_process_memory_bomb_is_bounded_as_a_whole():
    """Each process stays under its own limit; together they exceed the worker's budget."""
    budget = 256
    tests = ("import os, time\n\ndef test_bomb():\n"
             "    kids = []\n"
             "    for _ in range(4):\n"
             "        pid = os.fork()\n"
             "        if pid == 0:\n"
             "            block = bytearray(120 * 1024 * 1024)\n"
             "            for i in range(0, len(block), 4096):\n                block[i] = 1\n"
             "            time.sleep(2)\n"
             "            os._exit(0)\n"
             "        kids.append(pid)\n"
             "    codes = [os.waitpid(pid, 0)[1] for pid in kids]\n"
             "    assert codes == [0, 0, 0, 0]\n")
    run = run_tests(CODE, tests, memory_mb=budget, timeout_s=30)
    assert run.out_of_memory and not run.ok
    assert "memory budget" in run.reason
    assert run_tests(CODE, "def test_ok():\n    assert True\n", memory_mb=budget).ok  # the worker still serves


def test_nothing_is_left_behind():
    marker = "fdleft" + uuid.uuid4().hex[:6]
    tests = (f"import ctypes, os\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\n\n"
             "def test_spawn():\n    if os.fork() == 0:\n        import time\n        time.sleep(300)\n")
    run_tests(CODE, tests)
    close_idle_workers()
    pid = os.getpid()
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"fastdistill-sb-{pid}-*")) == []
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"fastdistill-root-{pid}-*")) == []
    assert glob.glob(f"/sys/fs/cgroup/*/fastdistill-{pid}-*") == []
    assert glob.glob(f"/sys/fs/cgroup/*/fastdistill-mem-{pid}-*") == []
    procs = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/comm") as fh:
                if p.isdigit() and fh.read().strip() == marker:
                    procs.append(p)
        except OSError:
            pass
    assert procs == []


def test_settings_budget_reaches_the_memory_cgroup():
    if not CAPS.get("memory_cgroup"):
        pytest.skip("no memory cgroup on this host")
    close_idle_workers()
    run_tests(CODE, "def test_x():\n    pass\n", memory_mb=300)
    (worker,) = [w for w in _sandbox._IDLE if w.owner_pid == os.getpid()]
    limit = worker.memory_cgroup / ("memory.limit_in_bytes" if CAPS["memory_cgroup_version"] == 1 else "memory.max")
    assert int(limit.read_text()) == 300 * 1024 * 1024
    assert SandboxSettings(memory_mb=300).memory_mb == 300
    close_idle_workers()
