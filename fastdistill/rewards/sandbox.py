"""Run untrusted pytest files against a code under test (CUT) in an isolated process.

Isolation, strongest first (whatever the kernel allows is used, see :func:`sandbox_capabilities`):

* fresh user, mount, network and PID namespaces (``unshare``): no network interfaces, every mount
  read-only except the run's temporary directory, all capabilities dropped, and every process the
  tests start dies with the namespace;
* an unprivileged uid/gid (:data:`UNPRIVILEGED_ID`, mapped into the user namespace next to the
  sandbox's uid 0 where the host may map other ids: a root host) that the worker becomes once its
  namespaces are set up, so the tests cannot read what only the host's root may read;
* a pids cgroup (when the caller may create one) capping the number of processes (fork bombs);
* resource limits: address space, CPU time, file size, number of processes, no core dumps;
* a wall-clock timeout that kills the whole process group;
* a scrubbed environment (no secrets of the parent), stdin closed, output capped;
* audit-hook guards inside the worker: socket connects fail, signals to foreign processes fail,
  and without a mount namespace writes outside the temporary directory fail.

Integrity of results: pytest runs with ``--noconftest``, no plugin autoloading and the cache
provider off; our own plugin collects and runs the tests in forked children and the worker reports
to this process through a pipe opened before any untrusted code runs (closed in the children), with
a per-run nonce on every line. pytest's exit code and terminal report are never used.
Limitation: code running inside one job can still lie about *that job's own* outcome if it finds
the job's nonce in its own memory; it can never hide a timeout, crash or a missing report.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from fastdistill.rewards.protocol import Gate, Job, JobResult, PairResult, PairSpec, from_wire, to_wire

logger = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("_child.py")
_CFG_NAME = ".fastdistill_sandbox.json"
OUTPUT_CAP = 64 * 1024
SANDBOX_MARK = "--fastdistill-sandbox="

SANDBOX_PYTHON: str | None = None
"""Interpreter the sandbox workers run (it must be able to import pytest). ``None`` (the default)
means the environment variable ``FASTDISTILL_SANDBOX_PYTHON`` if set, else ``sys.executable``."""

_TAIL_CHARS = 2000

SEALED_VIEW = True
"""With namespaces, ``pivot_root`` each worker into a minimal tree (see ``_child._seal_view``); where
the kernel refuses, the worker falls back to a read-only view of the host and a warning is logged once."""

TMP_MB = 64
"""Size cap of the sealed view's ``/tmp`` tmpfs (MB)."""

PREFORK_ZYGOTE = True
"""Workers fork each pair's zygote ahead of time, while idle, and warm it up with a trusted
collection (see ``_child._Server._start_spare``): a warm pair skips the fork and pytest's cold
collection. False forks a zygote when the pair arrives (the results are the same)."""

INLINE_SINGLE_JOB = True
"""A pair with one plain job (``run_tests`` with one repeat) runs it in the zygote itself instead of
in a child forked for it (see ``_child._Server._inline``); False always forks (the results are the same)."""

UNPRIVILEGED_ID = 65534
"""The uid and gid (``nobody``, the same number inside the sandbox's user namespace and outside) that
every process of a worker runs as once its namespaces are set up, with no supplementary groups. Only
a host that may map ids other than its own into a user namespace (root, with ``CAP_SETUID`` and
``CAP_SETGID``) can grant it; elsewhere the tests run as the sandbox's uid 0, which is the host's own
uid (see :func:`sandbox_capabilities`)."""

_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


class SandboxUnavailableError(RuntimeError):
    """The sandbox cannot run tests at all: a worker could not start, or died before it was ready.

    Raised instead of a score (a dead sandbox must never look like "the tests failed"): pytest
    missing in the worker's interpreter, namespace set-up failing, the interpreter crashing at
    start. The message names the cause and ends with the tail of the worker's output.
    Ordinary outcomes of the tests themselves (failing, timing out, crashing) are never raised.
    """


def sandbox_python() -> str:
    """The interpreter sandbox workers run: :data:`SANDBOX_PYTHON`, ``$FASTDISTILL_SANDBOX_PYTHON`` or ours."""
    return SANDBOX_PYTHON or os.environ.get("FASTDISTILL_SANDBOX_PYTHON") or sys.executable


@dataclass
class TestOutcome:
    """Outcome of one test function: ``passed``, ``failed``, ``error`` or ``skipped``."""

    __test__ = False

    nodeid: str
    outcome: str
    duration_s: float = 0.0
    message: str = ""


@dataclass
class TestRun:
    """Result of :func:`run_tests`.

    Counts are per test over all repeats: a test counts as passed only when it passed in every
    repeat. ``reason`` always says in words what happened (``"ok"`` when everything passed).
    """

    __test__ = False

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    timed_out: bool = False
    duration_s: float = 0.0
    reason: str = ""
    tests: list[TestOutcome] = field(default_factory=list)
    repeat_durations_s: list[float] = field(default_factory=list)
    flaky: bool = False
    completed: bool = False
    output: str = ""
    out_of_memory: bool = False
    """A process of the tests was killed for exceeding the sandbox's memory budget (the memory cgroup's
    OOM killer; only where the host has a memory cgroup, see :func:`sandbox_capabilities`)."""

    @property
    def ok(self) -> bool:
        """True when the run completed and at least one test passed with no failure or error."""
        return self.completed and not self.timed_out and self.passed > 0 and self.failed == 0 and self.errors == 0


@lru_cache(maxsize=1)
def sandbox_capabilities() -> dict:
    """Which isolation layers this machine allows.

    ``{"namespaces": bool, "unshare": path, "cgroup": pids cgroup root or None, "memory_cgroup": memory
    cgroup root or None, "memory_cgroup_version": 1, 2 or None, "user_maps": bool, "unprivileged_uid":
    int or None}``; each is found by trying (creating a cgroup, running ``unshare``, writing a user
    namespace's id maps), and a missing layer is logged once, naming what is not enforced.
    ``user_maps``: this process writes the workers' id maps itself (see :func:`_start_mapped`);
    ``unprivileged_uid``: the uid the tests run as (:data:`UNPRIVILEGED_ID`), None where only the
    host's own uid can be mapped.
    """
    unshare = shutil.which("unshare")
    namespaces, flags = False, None
    if unshare and sys.platform.startswith("linux"):
        for candidate in ("-rmnpfiu", "-rmnpf"):  # + IPC and UTS namespaces where allowed
            try:
                done = subprocess.run([unshare, candidate, "--kill-child", "true"], stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError):
                continue
            if done.returncode == 0:
                namespaces, flags = True, candidate
                break
        if namespaces and flags != "-rmnpfiu":
            logger.warning("fastdistill sandbox: no IPC/UTS namespaces here; SysV IPC objects are shared with the host")
    user_maps, unprivileged = (_probe_user_maps(unshare, flags) if namespaces else (False, False))
    if namespaces and not user_maps:
        logger.warning("fastdistill sandbox: cannot write the sandbox's id maps from outside here; workers use "
                       "`unshare -r`, and tests run as the sandbox's uid 0, which is uid %d outside", os.geteuid())
    elif namespaces and not unprivileged:
        logger.warning("fastdistill sandbox: no unprivileged uid can be mapped into the sandbox's user namespace "
                       "here (only root may map ids other than its own); tests run as the sandbox's uid 0, which "
                       "is uid %d outside: what that uid may read in the sandbox's view, they may read",
                       os.geteuid())
    cgroup = _probe_cgroup(("/sys/fs/cgroup/pids", "/sys/fs/cgroup"), "pids.max")
    memory = _probe_cgroup(("/sys/fs/cgroup/memory",), "memory.limit_in_bytes")
    memory_version = 1 if memory else None
    if memory is None:
        memory = _probe_cgroup(("/sys/fs/cgroup",), "memory.max")
        memory_version = 2 if memory else None
    if not namespaces:
        logger.warning("fastdistill sandbox: namespaces unavailable, falling back to rlimits + audit-hook guards")
    if memory is None:
        logger.warning("fastdistill sandbox: no memory cgroup can be created here; memory is bounded per process "
                       "(RLIMIT_AS) only, not for a worker as a whole")
    if cgroup is None and unprivileged:
        logger.warning("fastdistill sandbox: no pids cgroup can be created here; processes are capped per worker by "
                       "RLIMIT_NPROC of its unprivileged uid only")
    elif cgroup is None:
        logger.warning("fastdistill sandbox: no pids cgroup can be created here; RLIMIT_NPROC does not bind root, "
                       "so forks are bounded only by the per-pair kill and timeouts")
    return {"namespaces": namespaces, "cgroup": cgroup, "unshare": unshare, "unshare_flags": flags or "-rmnpf",
            "memory_cgroup": memory,
            "memory_cgroup_version": memory_version, "user_maps": user_maps,
            "unprivileged_uid": UNPRIVILEGED_ID if unprivileged else None}


def _probe_user_maps(unshare: str, flags: str) -> tuple[bool, bool]:
    """Start ``true`` the way workers start (:func:`_start_mapped`): (it ran, the unprivileged id was mapped)."""
    try:
        proc, mapped = _start_mapped({"unshare": unshare, "unshare_flags": flags}, ["true"], time.monotonic() + 10,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False, False
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()  # (--kill-child takes the rest with it)
        proc.wait()
        return False, False
    return code == 0, code == 0 and mapped


_SYNC = 'read -r _ || exit 1; exec "$@" </dev/null'
"""The shell ``unshare`` runs first: it waits for our line on stdin (the id maps are written), then
becomes the real command, with stdin from /dev/null (or exits 1 if we closed the pipe instead)."""


def _start_mapped(caps: dict, cmd: list, deadline: float, on_start=None, **popen_kw) -> tuple:
    """Start ``cmd`` in fresh namespaces (``unshare`` with ``caps["unshare_flags"]``, ``-U`` for ``-r``)
    whose user namespace's id maps this process writes; returns ``(process, unprivileged id mapped)``.

    ``unshare -r`` can map only our own uid (the map is written once, from inside). Here ``unshare``
    creates the namespaces with no id mapped and runs a tiny shell that waits; as soon as the process
    is in its new user namespace we write the maps from outside (:func:`_write_id_maps`: uid/gid 0
    inside = ours, plus :data:`UNPRIVILEGED_ID` where the kernel lets us) and release the shell, which
    then execs ``cmd`` as uid 0 of the namespace with every capability there, as ``unshare -r`` would.
    ``on_start(pid)`` runs as soon as the process exists. If ``unshare`` fails, the process just exits
    with its message on its output.
    """
    flags = _mapped_flags(caps)
    go_r, go_w = os.pipe()
    try:
        try:
            proc = subprocess.Popen([caps["unshare"], flags, "--kill-child", "/bin/sh", "-c", _SYNC, "sh", *cmd],
                                    stdin=go_r, **popen_kw)
        finally:
            os.close(go_r)
        try:
            if on_start is not None:
                on_start(proc.pid)
            mapped = False
            if _entered_user_namespace(proc, deadline):
                try:
                    mapped = _write_id_maps(proc.pid)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot write the id maps of the sandbox's user namespace: {exc}")
                try:
                    os.write(go_w, b"go\n")
                except BrokenPipeError:  # it died meanwhile: the caller sees it exit
                    pass
        except BaseException:
            proc.kill()  # (--kill-child takes the shell with it)
            proc.wait()
            raise
        return proc, mapped
    finally:
        os.close(go_w)  # (a shell still waiting reads EOF and exits 1)


def _mapped_flags(caps: dict) -> str:
    """``unshare`` flags for :func:`_start_mapped`: the probed ones with ``-U`` (no ids mapped) for ``-r``."""
    return (caps.get("unshare_flags") or "-rmnpf").replace("r", "U", 1)


def _entered_user_namespace(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``proc`` is in a user namespace other than ours (False: it exited first, or timeout)."""
    ours = os.readlink("/proc/self/ns/user")
    delay = 0.0002
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/user") != ours:
                return True
        except OSError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    return False


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())  # one write: the kernel takes a map in a single write only
    finally:
        os.close(fd)


def _write_id_maps(pid: int) -> bool:
    """Write the id maps of ``pid``'s user namespace: 0 inside = our euid/egid outside, plus
    :data:`UNPRIVILEGED_ID` = itself where the kernel allows it (``CAP_SETUID``/``CAP_SETGID`` over our
    own user namespace: a root host); otherwise only our own ids, as ``unshare -r`` writes them (with
    ``setgroups`` denied, which the kernel requires for that). True when both extra ids are mapped."""
    extra = UNPRIVILEGED_ID
    mapped = 0
    for kind, own in (("uid", os.geteuid()), ("gid", os.getegid())):
        path = f"/proc/{pid}/{kind}_map"
        if own != extra:
            try:
                _write_proc(path, f"0 {own} 1\n{extra} {extra} 1\n")
                mapped += 1
                continue
            except OSError:
                pass
        if kind == "gid":
            _write_proc(f"/proc/{pid}/setgroups", "deny")
        _write_proc(path, f"0 {own} 1\n")
    return mapped == 2


def _probe_cgroup(bases, control: str) -> str | None:
    """The first of ``bases`` under which we may create a cgroup that has the ``control`` file."""
    for base in bases:
        probe = Path(base) / f"fastdistill-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            if (probe / control).exists():
                return base
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass
    return None


def _scrubbed_env(workdir: str) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


class _Worker:
    """One sandboxed pytest worker process that serves (code, tests) pairs one after another.

    Started with the isolation layers of :func:`sandbox_capabilities`; it reads pair specs from a
    command pipe and reports each pair's job results through a nonce-tagged result pipe. A pair
    that overruns its budget (plus grace) or a dead worker makes :meth:`run_pair` return an honest
    failure and marks the worker unusable (the caller starts a fresh one).
    """

    START_TIMEOUT_S = 60.0
    GRACE_S = 5.0

    def __init__(self, *, memory_mb: int, nproc: int = 64, cpu_s: int = 86400):
        caps = sandbox_capabilities()
        self.namespaces = bool(caps["namespaces"])
        python = sandbox_python()
        self.limits = (memory_mb, nproc, python)
        self.owner_pid = os.getpid()
        self.alive = False
        self.proc = None
        self.cgroup_dirs: list[Path] = []
        self.memory_cgroup: Path | None = None
        self.rootdir = None
        self.view = ""
        self.uid = None  # the uid the worker and the tests run as inside (from its ready message)
        self.uid_note = ""  # why it is not UNPRIVILEGED_ID, if it is not
        self.result_r = self.cmd_w = -1
        self._buf = b""
        self._output = bytearray()
        token = secrets.token_hex(8)
        self.nonce = secrets.token_hex(16).encode()
        # owner pid in the name: leak checks can tell runs apart
        self.workdir = tempfile.mkdtemp(prefix=f"fastdistill-sb-{os.getpid()}-")
        try:
            os.chmod(self.workdir, 0o700)
            ini_file = os.path.join(self.workdir, "fastdistill_pytest.ini")
            Path(ini_file).write_text("[pytest]\naddopts =\n", encoding="utf-8")
            if self.namespaces and SEALED_VIEW:  # mount point of the worker's own root (see _child._seal_view)
                self.rootdir = tempfile.mkdtemp(prefix=f"fastdistill-root-{os.getpid()}-")
            cfg = {"nonce": self.nonce.decode(), "workdir": self.workdir, "ini_file": ini_file,
                   "memory_mb": memory_mb, "fsize_mb": 64, "nproc": nproc, "cpu_s": cpu_s,
                   "namespaces": self.namespaces, "root_dir": self.rootdir, "tmp_mb": TMP_MB,
                   "prefork": bool(PREFORK_ZYGOTE), "inline": bool(INLINE_SINGLE_JOB),
                   "drop_ids": ([UNPRIVILEGED_ID, UNPRIVILEGED_ID] if self.namespaces and caps.get("unprivileged_uid")
                                is not None else None)}
            Path(self.workdir, _CFG_NAME).write_text(json.dumps(cfg), encoding="utf-8")
            result_r, result_w = os.pipe()
            cmd_r, cmd_w = os.pipe()
            self.result_r, self.cmd_w = result_r, cmd_w
            cmd = [python, "-I", str(_CHILD), str(result_w), str(cmd_r), SANDBOX_MARK + token]
            flags = caps.get("unshare_flags") or "-rmnpf"
            mapped_here = self.namespaces and caps.get("user_maps")
            if self.namespaces and not mapped_here:
                cmd = [caps["unshare"], flags, "--kill-child", *cmd]
            self.cgroup_dirs = self._make_cgroups(caps, token, memory_mb, nproc)
            oom_fd = None
            if self.memory_cgroup is not None:  # the worker reads its OOM-kill counter through this fd
                events = "memory.oom_control" if caps["memory_cgroup_version"] == 1 else "memory.events"
                try:
                    oom_fd = os.open(self.memory_cgroup / events, os.O_RDONLY)
                except OSError:
                    oom_fd = None
            cfg["oom_fd"] = oom_fd
            Path(self.workdir, _CFG_NAME).write_text(json.dumps(cfg), encoding="utf-8")
            popen = {"cwd": self.workdir, "env": _scrubbed_env(self.workdir), "stdout": subprocess.PIPE,
                     "stderr": subprocess.STDOUT, "start_new_session": True,
                     "pass_fds": (result_w, cmd_r) + ((oom_fd,) if oom_fd is not None else ())}
            try:
                if mapped_here:  # we write the id maps (an unprivileged uid too, where allowed)
                    self.proc, _ = _start_mapped(caps, cmd, time.monotonic() + self.START_TIMEOUT_S,
                                                 on_start=self._confine, **popen)
                else:
                    self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen)
                    self._confine(self.proc.pid)  # as early as possible; again once it is ready (see below)
            finally:
                os.close(result_w)
                os.close(cmd_r)
                if oom_fd is not None:
                    os.close(oom_fd)
            self.sel = selectors.DefaultSelector()
            self.sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
            self.sel.register(self.result_r, selectors.EVENT_READ, "res")
            ready = self._wait(time.monotonic() + self.START_TIMEOUT_S, lambda m: m.get("t") == "ready")
            if ready == "ok":  # nothing untrusted has run yet: every process of the worker goes in now
                self._confine(self.proc.pid)
                self.view = str(self._last.get("view") or "")
                if self.view != "sealed" and SEALED_VIEW:
                    _warn_once(f"fastdistill sandbox: the sealed view is not enforced here ({self.view}); tests "
                               "see the host's files read-only (secrets readable by the sandbox's uid included)")
                self.uid, self.uid_note = self._last.get("uid"), str(self._last.get("uid_note") or "")
                if cfg["drop_ids"] and self.uid != UNPRIVILEGED_ID:
                    _warn_once(f"fastdistill sandbox: tests do not run as the unprivileged uid {UNPRIVILEGED_ID} "
                               f"({self.uid_note or 'reason unknown'}); they run as the sandbox's uid "
                               f"{self.uid}, which is uid {os.geteuid()} outside")
            self.alive = ready == "ok"
            self.start_error = ""
            if not self.alive:
                self._drain_output()
                self.close()
                how = (f"timed out after {self.START_TIMEOUT_S:.0f}s waiting for it to be ready"
                       if ready == "timeout" else f"it exited with return code {self.proc.returncode}")
                tail = self._output.decode("utf-8", "replace").strip()[-_TAIL_CHARS:]
                self.start_error = (f"sandbox worker did not start: {how} (interpreter {python}"
                                    + (f", via {caps['unshare']} {_mapped_flags(caps)} with id maps "
                                       "written by this process" if mapped_here else
                                       f", via {caps['unshare']} {flags}" if self.namespaces else "") + "); "
                                    + (f"its output ends with:\n{tail}" if tail else "it wrote nothing"))
        except BaseException:
            self.close()
            raise

    def _make_cgroups(self, caps: dict, token: str, memory_mb: int, nproc: int) -> list[Path]:
        """This worker's pids cgroup (process cap, binds root too) and memory cgroup (budget of the
        worker as a whole, no swap), where the host lets us create them."""
        made = []
        if caps.get("cgroup"):
            try:
                path = Path(caps["cgroup"]) / f"fastdistill-{os.getpid()}-{token}"  # owner pid: leak checks
                path.mkdir()
                made.append(path)
                (path / "pids.max").write_text(str(nproc))
            except OSError as exc:
                logger.warning("fastdistill sandbox: pids cgroup not set up (%s); processes not capped", exc)
        if caps.get("memory_cgroup"):
            budget = str(int(memory_mb) * 1024 * 1024)
            try:
                path = Path(caps["memory_cgroup"]) / f"fastdistill-mem-{os.getpid()}-{token}"
                path.mkdir()
                made.append(path)
                if caps["memory_cgroup_version"] == 1:
                    (path / "memory.limit_in_bytes").write_text(budget)
                    if (path / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
                        (path / "memory.memsw.limit_in_bytes").write_text(budget)
                else:
                    (path / "memory.max").write_text(budget)
                    for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                        if (path / name).exists():
                            (path / name).write_text(value)
                self.memory_cgroup = path
            except OSError as exc:
                logger.warning("fastdistill sandbox: memory cgroup not set up (%s); memory bounded per process only",
                               exc)
        return made

    def _confine(self, pid: int) -> None:
        """Move ``pid`` and its descendants into this worker's cgroups and make them the OOM killer's
        first choice (``oom_score_adj`` 1000, inherited by every process they start)."""
        pids = _descendants(pid)
        for cgroup_dir in self.cgroup_dirs:
            for p in pids:
                try:
                    (cgroup_dir / "cgroup.procs").write_text(str(p))
                except OSError:
                    pass  # already gone
        for p in pids:
            try:
                Path(f"/proc/{p}/oom_score_adj").write_text("1000")
            except OSError:
                pass

    def _drain_output(self) -> None:
        """Read what the (dead or stuck) worker left on its output pipe, for the error message."""
        if self.proc is None or self.proc.stdout is None:
            return
        deadline = time.monotonic() + 1.0
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        while len(self._output) < OUTPUT_CAP and time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
                continue
            except OSError:
                break
            if not chunk:
                break
            self._output += chunk[: OUTPUT_CAP - len(self._output)]

    def _wait(self, deadline: float, want) -> str:
        """Pump both pipes until a message satisfies ``want`` ("ok"), EOF ("died") or "timeout"."""
        prefix = self.nonce + b" "
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            events = self.sel.select(timeout=min(remaining, 1.0))
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    return "died"
                if key.data == "out":
                    if len(self._output) < OUTPUT_CAP:
                        self._output += chunk[: OUTPUT_CAP - len(self._output)]
                    continue
                self._buf += chunk
                *lines, self._buf = self._buf.split(b"\n")
                for line in lines:
                    if not line.startswith(prefix):
                        continue
                    try:
                        msg = json.loads(line[len(prefix):])
                    except ValueError:
                        continue
                    if want(msg):
                        self._last = msg
                        return "ok"

    def run_pair(self, spec: PairSpec) -> PairResult:
        """Send one pair (its wire form, see :mod:`~fastdistill.rewards.protocol`) and wait for its result."""
        start = time.monotonic()
        self._output = bytearray()
        payload = json.dumps(to_wire(spec)).encode()
        try:
            _write_all(self.cmd_w, len(payload).to_bytes(8, "big") + payload)
            status = self._wait(start + float(spec.timeout_s) + self.GRACE_S,
                                lambda m: m.get("t") == "pair" and m.get("id") == spec.id)
        except OSError:
            status = "died"
        if status == "ok":
            out = from_wire(PairResult, self._last)
            out.oom_kills = int(out.oom_kills or 0)
            out.zygote = str(out.zygote or "")
        else:
            self.alive = False
            out = PairResult(timed_out=status == "timeout")
            self.close()
            out.returncode = self.proc.returncode if self.proc else None
        out.output = self._output.decode("utf-8", "replace")
        out.duration_s = time.monotonic() - start
        if out.timed_out:
            out.reason = f"timed out after {float(spec.timeout_s):.1f}s (wall clock); process group killed"
        elif not out.completed:
            out.reason = (f"sandbox worker died before reporting (return code {out.returncode})" if status != "ok"
                          else f"test process ended before reporting ({out.exit or 'no report'})")
        return out

    def close(self) -> None:
        """Stop the worker (closing its command pipe), kill its process group, remove its files."""
        self.alive = False
        if self.cmd_w >= 0:
            os.close(self.cmd_w)
            self.cmd_w = -1
        if self.proc is not None:
            _kill_group(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()
        if getattr(self, "sel", None) is not None:
            self.sel.close()
            self.sel = None
        if self.result_r >= 0:
            os.close(self.result_r)
            self.result_r = -1
        for cgroup_dir in self.cgroup_dirs:
            _remove_cgroup(cgroup_dir)
        self.cgroup_dirs = []
        self.memory_cgroup = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self.rootdir:
            try:
                os.rmdir(self.rootdir)  # an empty mount point (the tree lived in the worker's mount namespace)
            except OSError:
                shutil.rmtree(self.rootdir, ignore_errors=True)
            self.rootdir = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


KEEP_WARM = True
"""Default of every ``keep_warm=None`` argument: keep sandbox workers alive between calls (a warm
pool, started lazily by the first call, reused by the next ones, stopped after
:data:`IDLE_TIMEOUT_S` without use, at interpreter exit and by :func:`close_idle_workers`)."""

IDLE_TIMEOUT_S = 60.0
"""A warm worker unused this long is stopped (checked every few seconds by a daemon thread)."""

_IDLE: list = []
_IDLE_LOCK = threading.Lock()
_REAPER: list = []  # the idle reaper thread of this process, once started


def _keep_warm(keep_warm: bool | None) -> bool:
    return KEEP_WARM if keep_warm is None else bool(keep_warm)


def _acquire_worker(memory_mb: int, nproc: int, keep_warm: bool) -> _Worker:
    if keep_warm:
        key = (memory_mb, nproc, sandbox_python())
        stale = []
        with _IDLE_LOCK:
            found = None
            for index, worker in enumerate(_IDLE):
                if worker.owner_pid != os.getpid() or worker.limits != key:
                    continue
                if worker.proc is None or worker.proc.poll() is not None:
                    stale.append(worker)
                    continue
                found = worker
                break
            for worker in [*stale, *([found] if found else [])]:
                _IDLE.remove(worker)
        for worker in stale:
            worker.close()
        if found is not None:
            return found
    return _Worker(memory_mb=memory_mb, nproc=nproc)


def _release_worker(worker: _Worker, keep_warm: bool) -> None:
    if keep_warm and worker.alive and worker.namespaces and worker.owner_pid == os.getpid():
        with _IDLE_LOCK:
            if len(_IDLE) < max(2, os.cpu_count() or 1):
                worker.idle_since = time.monotonic()
                _IDLE.append(worker)
                _start_reaper()
                return
    worker.close()


def _start_reaper() -> None:
    """Start (once per process, with ``_IDLE_LOCK`` held) the thread that stops idle workers."""
    if _REAPER and _REAPER[0].is_alive():
        return
    thread = threading.Thread(target=_reap_idle, name="fastdistill-sandbox-reaper", daemon=True)
    _REAPER[:] = [thread]
    thread.start()


def _reap_idle() -> None:
    while True:
        time.sleep(min(5.0, max(0.05, IDLE_TIMEOUT_S / 4)))
        now = time.monotonic()
        with _IDLE_LOCK:
            old = [w for w in _IDLE if w.owner_pid == os.getpid() and now - w.idle_since >= IDLE_TIMEOUT_S]
            for worker in old:
                _IDLE.remove(worker)
            if not _IDLE:
                _REAPER.clear()
        for worker in old:
            worker.close()
        if not _REAPER:
            return


def close_idle_workers() -> None:
    """Stop the warm sandbox workers of this process (also done after idling and at interpreter exit)."""
    with _IDLE_LOCK:
        workers = [w for w in _IDLE if w.owner_pid == os.getpid()]
        _IDLE.clear()
    for worker in workers:
        worker.close()


def _forget_pool_after_fork() -> None:
    """In a forked child the parent's workers are not ours: forget them (without touching them)."""
    global _IDLE_LOCK
    _IDLE_LOCK = threading.Lock()
    _IDLE.clear()
    _REAPER.clear()


atexit.register(close_idle_workers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def execute_pairs(specs: list, *, memory_mb: int, n_workers: int = 1, nproc: int = 64,
                  keep_warm: bool | None = None) -> list[PairResult]:
    """Run many (code, tests, jobs) pairs on up to ``n_workers`` sandbox workers; one
    :class:`~fastdistill.rewards.protocol.PairResult` each.

    Raises :class:`SandboxUnavailableError` when a worker cannot start (see its docstring).

    Each spec: a :class:`~fastdistill.rewards.protocol.PairSpec` or its wire form (see
    :mod:`~fastdistill.rewards.protocol`; ``id`` is assigned here). With namespaces a worker serves
    many pairs (start-up paid once per worker); without them every pair gets a fresh worker. Pairs
    are handed out largest first, one at a time, to whichever worker is free. ``keep_warm`` (default :data:`KEEP_WARM`,
    True) keeps the workers alive after the call for the next one (a GRPO run scores a batch every
    step; a loop of single calls reuses them); they are stopped after :data:`IDLE_TIMEOUT_S`
    unused, by :func:`close_idle_workers` or at interpreter exit. ``keep_warm=False``: nothing
    outlives the call.
    """
    specs = [from_wire(PairSpec, spec) for spec in specs]
    for spec in specs:
        if not spec.module_name.isidentifier():
            raise ValueError(f"module_name must be a Python identifier, got {spec.module_name!r}")
    if not specs:
        return []
    keep_warm = _keep_warm(keep_warm)
    specs = [replace(spec, id=i) for i, spec in enumerate(specs)]
    per_worker = None if sandbox_capabilities()["namespaces"] else 1
    order = sorted(range(len(specs)), key=lambda i: -len(specs[i].jobs))
    queue_lock = threading.Lock()
    results: list = [None] * len(specs)
    unavailable: list[SandboxUnavailableError] = []

    def serve():
        worker, served = None, 0
        try:
            while True:
                with queue_lock:
                    if not order or unavailable:
                        return
                    index = order.pop(0)
                spec = specs[index]
                if worker is None:
                    try:
                        worker = _acquire_worker(memory_mb, nproc, keep_warm)
                    except OSError as exc:
                        worker = None
                        with queue_lock:
                            unavailable.append(SandboxUnavailableError(
                                f"could not start the sandbox worker ({sandbox_python()}): {exc}"))
                        return
                    served = 0
                    if not worker.alive:  # a sandbox that cannot start is an error, never a score
                        with queue_lock:
                            unavailable.append(SandboxUnavailableError(worker.start_error))
                        worker.close()
                        worker = None
                        return
                results[index] = worker.run_pair(spec)
                served += 1
                if not worker.alive or (per_worker is not None and served >= per_worker):
                    worker.close()
                    worker = None
        finally:
            if worker is not None:
                _release_worker(worker, keep_warm)

    n_threads = max(1, min(n_workers, len(specs)))
    if n_threads == 1:
        serve()
    else:
        threads = [threading.Thread(target=serve, daemon=True) for _ in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if unavailable:
        raise unavailable[0]
    return results


def execute_jobs(code: str, tests: str, jobs: list[dict], *, timeout_s: float, memory_mb: int,
                 module_name: str = "solution", write_module: bool = True, nproc: int = 64,
                 extra_cfg: dict | None = None) -> PairResult:
    """Low-level entry point shared by :func:`run_tests` and the mutation engine (one pair).

    Each job is ``{"source": str | None, "stop_first": bool, "timeout_s": float | None}``
    (``source=None`` runs the CUT as written to disk / installed for the pair; ``timeout_s=None``
    derives the budget from the first job's time through ``extra_cfg["baseline_gate"]``). Returns the
    pair's :class:`~fastdistill.rewards.protocol.PairResult` (finished jobs in order).
    """
    gate = (extra_cfg or {}).get("baseline_gate")
    spec = PairSpec(code=code, tests=tests, module_name=module_name, write_module=write_module, timeout_s=timeout_s,
                    jobs=[from_wire(Job, job) for job in jobs], gate=from_wire(Gate, gate) if gate else None)
    return execute_pairs([spec], memory_mb=memory_mb, n_workers=1, nproc=nproc)[0]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.error("sandbox process %s did not die after SIGKILL", proc.pid)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (through ``/proc/<pid>/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except (OSError, ValueError):
                continue
    return found


def _remove_cgroup(path: Path) -> None:
    procs = path / "cgroup.procs"
    for _ in range(200):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.01)
    logger.warning("could not remove cgroup %s", path)


def _summarise_job(job: JobResult) -> list[TestOutcome]:
    outcomes = [TestOutcome(nodeid=n, outcome=o, duration_s=float(d), message=m) for n, o, d, m in job.tests]
    for nodeid, message in job.collect_errors:
        outcomes.append(TestOutcome(nodeid=nodeid, outcome="error", message=message))
    return outcomes


def run_tests(code: str, tests: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, repeats: int = 1,
              module_name: str = "solution", keep_warm: bool | None = None) -> TestRun:
    """Run the pytest file ``tests`` against ``code`` (importable as ``module_name``) in the sandbox.

    Args:
        code: source of the code under test, written to ``<module_name>.py``.
        tests: source of the pytest file (imports the CUT with ``from solution import ...``).
        timeout_s: wall-clock budget for the whole run, all repeats included.
        memory_mb: address-space limit of every sandboxed process.
        repeats: run the tests this many times (each in a fresh forked process, pytest start-up paid
            once); a test passes only if it passes every time, ``flaky`` says whether outcomes varied.
        module_name: import name of the CUT.
        keep_warm: reuse a warm worker and leave it warm (default :data:`KEEP_WARM`), see
            :func:`execute_pairs`.

    Never raises for anything the tests do; problems are reported in ``reason``. Raises
    :class:`SandboxUnavailableError` when the sandbox itself cannot run (a worker does not start).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    per_job = max(0.5, float(timeout_s) - 0.5)
    spec = PairSpec(code=code, tests=tests, module_name=module_name, timeout_s=timeout_s,
                    jobs=[Job(timeout_s=per_job) for _ in range(repeats)])
    raw = execute_pairs([spec], memory_mb=memory_mb, n_workers=1, keep_warm=keep_warm)[0]
    return _to_test_run(raw, repeats)


def run_tests_many(codes: list[str], tests: list[str], *, timeout_s: float = 10.0, memory_mb: int = 1024,
                   repeats: int = 1, module_name: str = "solution", n_workers: int | None = None,
                   keep_warm: bool | None = None) -> list[TestRun]:
    """:func:`run_tests` for many (code, tests) pairs at once, spread over ``n_workers`` sandbox workers."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if len(codes) != len(tests):
        raise ValueError("codes and tests must have the same length")
    per_job = max(0.5, float(timeout_s) - 0.5)
    specs = [PairSpec(code=c, tests=t, module_name=module_name, timeout_s=timeout_s,
                      jobs=[Job(timeout_s=per_job) for _ in range(repeats)]) for c, t in zip(codes, tests)]
    raws = execute_pairs(specs, memory_mb=memory_mb, n_workers=n_workers or os.cpu_count() or 1,
                         keep_warm=keep_warm)
    return [_to_test_run(raw, repeats) for raw in raws]


def _raised_memory_error(message: str) -> bool:
    """Whether a pytest failure/error report ends in a ``MemoryError`` (pytest's ``E   MemoryError`` line), or
    in one of the ``SystemError`` s CPython raises when an allocation fails deep inside ``compile`` or the
    AST code (seen with huge test files under the sandbox's address-space limit)."""
    starved = ("MemoryError", "SystemError: compile returned NULL", "SystemError: error return without exception")
    return any(line.startswith("E ") and line[1:].strip().startswith(starved) for line in message.splitlines()[-3:])


def _to_test_run(raw: PairResult, repeats: int) -> TestRun:
    run = TestRun(duration_s=raw.duration_s, completed=raw.completed, timed_out=raw.timed_out, output=raw.output)
    reasons = [raw.reason] if raw.reason else []
    merged: dict[str, TestOutcome] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    seen_outcomes: dict[str, set] = {}
    for job in raw.jobs:
        if job.status == "timeout":
            run.timed_out = True
            reasons.append(f"repeat {job.i + 1}: timed out after {job.duration_s:.1f}s")
        elif job.status == "crash":
            reasons.append(f"repeat {job.i + 1}: test process ended before pytest finished"
                           f" ({job.exit or 'no final report'}; os._exit or a crash?)")
        elif job.status == "memory":
            run.out_of_memory = True
            reasons.append(f"repeat {job.i + 1}: killed for exceeding the sandbox memory budget")
        run.repeat_durations_s.append(sum(float(t[2]) for t in job.tests))
        for outcome in _summarise_job(job):
            seen_outcomes.setdefault(outcome.nodeid, set()).add(outcome.outcome)
            prev = merged.get(outcome.nodeid)
            if prev is None or rank[outcome.outcome] > rank[prev.outcome]:
                merged[outcome.nodeid] = outcome
    run.tests = list(merged.values())
    for outcome in run.tests:
        if outcome.outcome == "passed":
            run.passed += 1
        elif outcome.outcome == "failed":
            run.failed += 1
        elif outcome.outcome == "error":
            run.errors += 1
        else:
            run.skipped += 1
    # A MemoryError raised inside the tests' process (RLIMIT_AS reached: a huge test file's assertion
    # rewriting and compile, or a test that allocates too much) is a memory outcome too, not a plain error.
    starved = [t for t in run.tests if t.outcome in ("failed", "error") and _raised_memory_error(t.message)]
    if starved and not run.out_of_memory:
        run.out_of_memory = True
        reasons.append(f"out of memory: {starved[0].nodeid} ran out of memory (MemoryError; the sandbox memory "
                       "budget is too small for this test file; SandboxSettings.memory_mb raises it)")
    if raw.oom_kills and not run.out_of_memory:  # the OOM killer ended one of the tests' processes
        run.out_of_memory = True
        reasons.append(f"{raw.oom_kills} process(es) killed for exceeding the sandbox memory budget")
    finished = [j for j in raw.jobs if j.status == "ok"]
    if len(finished) != repeats:
        run.completed = False
        if run.errors == 0 and not run.timed_out:
            run.errors += 1  # a crash or missing repeat must never look like success
    run.flaky = any(len(v) > 1 for v in seen_outcomes.values())
    if run.flaky:
        reasons.append("flaky: outcomes differ between repeats")
    if not run.tests and not reasons:
        reasons.append("no tests were collected")
    if run.failed or run.errors:
        first = next((t for t in run.tests if t.outcome in ("failed", "error")), None)
        reasons.append(f"{run.failed} failed, {run.errors} errors" + (f"; first: {first.nodeid}" if first else ""))
    run.reason = "; ".join(reasons) if reasons else f"ok: {run.passed} passed"
    return run
