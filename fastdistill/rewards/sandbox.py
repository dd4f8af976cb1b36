"""Run untrusted pytest files against a code under test (CUT) in an isolated process.

Isolation, strongest first (whatever the kernel allows is used, see :func:`sandbox_capabilities`):

* fresh user, mount, network and PID namespaces (``unshare``): no network interfaces, every mount
  read-only except the run's temporary directory, all capabilities dropped, and every process the
  tests start dies with the namespace;
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
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("_child.py")
_CFG_NAME = ".fastdistill_sandbox.json"
OUTPUT_CAP = 64 * 1024
SANDBOX_MARK = "--fastdistill-sandbox="


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

    @property
    def ok(self) -> bool:
        """True when the run completed and at least one test passed with no failure or error."""
        return self.completed and not self.timed_out and self.passed > 0 and self.failed == 0 and self.errors == 0


@lru_cache(maxsize=1)
def sandbox_capabilities() -> dict:
    """Which isolation layers this machine allows: ``{"namespaces": bool, "cgroup": str | None}``."""
    unshare = shutil.which("unshare")
    namespaces = False
    if unshare and sys.platform.startswith("linux"):
        try:
            done = subprocess.run([unshare, "-rmnpf", "--kill-child", "true"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=10)
            namespaces = done.returncode == 0
        except (OSError, subprocess.SubprocessError):
            namespaces = False
    cgroup = None
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        probe = Path(base) / f"fastdistill-probe-{os.getpid()}"
        try:
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
            if ok:
                cgroup = base
                break
        except OSError:
            continue
    if not namespaces:
        logger.warning("fastdistill sandbox: namespaces unavailable, falling back to rlimits + audit-hook guards")
    return {"namespaces": namespaces, "cgroup": cgroup, "unshare": unshare}


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


def execute_jobs(code: str, tests: str, jobs: list[dict], *, timeout_s: float, memory_mb: int,
                 module_name: str = "solution", write_module: bool = True, nproc: int = 64,
                 extra_cfg: dict | None = None) -> dict:
    """Low-level entry point shared by :func:`run_tests` and the mutation engine.

    Each job is ``{"source": str | None, "stop_first": bool, "timeout_s": float}`` (``source=None``
    imports ``module_name`` from the file written to disk). Returns ``{"jobs": [...], "completed":
    bool, "timed_out": bool, "output": str, "returncode": int | None, "reason": str,
    "duration_s": float}`` where finished jobs appear in order.
    """
    if not module_name.isidentifier():
        raise ValueError(f"module_name must be a Python identifier, got {module_name!r}")
    caps = sandbox_capabilities()
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="fastdistill-sb-")
    token = secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    test_file = os.path.join(workdir, f"test_{module_name}_tests.py")
    ini_file = os.path.join(workdir, "fastdistill_pytest.ini")
    cgroup_dir = None
    proc = None
    result_r = result_w = -1
    out = {"jobs": [], "completed": False, "timed_out": False, "output": "", "returncode": None, "reason": ""}
    try:
        os.chmod(workdir, 0o700)
        if write_module:
            Path(workdir, f"{module_name}.py").write_text(code, encoding="utf-8")
        Path(test_file).write_text(tests, encoding="utf-8")
        Path(ini_file).write_text("[pytest]\naddopts =\n", encoding="utf-8")
        cfg = {
            "nonce": nonce, "workdir": workdir, "module_name": module_name, "test_file": test_file,
            "ini_file": ini_file, "memory_mb": memory_mb, "fsize_mb": 64, "nproc": nproc,
            "cpu_s": int(timeout_s) + 2, "namespaces": caps["namespaces"], "jobs": jobs, **(extra_cfg or {}),
        }
        Path(workdir, _CFG_NAME).write_text(json.dumps(cfg), encoding="utf-8")
        result_r, result_w = os.pipe()
        cmd = [sys.executable, "-I", str(_CHILD), str(result_w), SANDBOX_MARK + token]
        if caps["namespaces"]:
            cmd = [caps["unshare"], "-rmnpf", "--kill-child", *cmd]
        preexec = None
        if caps["cgroup"]:
            try:
                cgroup_dir = Path(caps["cgroup"]) / f"fastdistill-{token}"
                cgroup_dir.mkdir()
                (cgroup_dir / "pids.max").write_text(str(nproc))
                procs = str(cgroup_dir / "cgroup.procs")

                def preexec():  # runs in the child between fork and exec
                    with open(procs, "w") as fh:
                        fh.write(str(os.getpid()))
            except OSError:
                cgroup_dir = None
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=_scrubbed_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, pass_fds=(result_w,), start_new_session=True, preexec_fn=preexec,
        )
        os.close(result_w)
        result_w = -1
        deadline = start + timeout_s
        output = bytearray()
        buf = b""
        prefix = nonce.encode() + b" "
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(result_r, selectors.EVENT_READ, "res")
        open_streams = 2
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out["timed_out"] = True
                break
            for key, _ in sel.select(timeout=min(remaining, 1.0)):
                fd = key.fd
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.data == "out":
                    if len(output) < OUTPUT_CAP:
                        output += chunk[: OUTPUT_CAP - len(output)]
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.startswith(prefix):
                        continue
                    try:
                        msg = json.loads(line[len(prefix):])
                    except ValueError:
                        continue
                    if msg.get("t") == "job":
                        out["jobs"].append(msg)
                    elif msg.get("t") == "done":
                        out["completed"] = True
            if out["completed"]:
                break
        sel.close()
        out["output"] = output.decode("utf-8", "replace")
    finally:
        if proc is not None:
            _kill_group(proc)
            out["returncode"] = proc.returncode
            if proc.stdout:
                proc.stdout.close()
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        if cgroup_dir is not None:
            _remove_cgroup(cgroup_dir)
        shutil.rmtree(workdir, ignore_errors=True)
    out["duration_s"] = time.monotonic() - start
    if out["timed_out"]:
        out["reason"] = f"timed out after {timeout_s:.1f}s (wall clock); process group killed"
    elif not out["completed"]:
        out["reason"] = f"sandbox worker died before reporting (return code {out['returncode']})"
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.error("sandbox process %s did not die after SIGKILL", proc.pid)


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


def _summarise_job(job: dict) -> list[TestOutcome]:
    outcomes = [TestOutcome(nodeid=n, outcome=o, duration_s=float(d), message=m) for n, o, d, m in job["tests"]]
    for nodeid, message in job.get("collect_errors", []):
        outcomes.append(TestOutcome(nodeid=nodeid, outcome="error", message=message))
    return outcomes


def run_tests(code: str, tests: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, repeats: int = 1,
              module_name: str = "solution") -> TestRun:
    """Run the pytest file ``tests`` against ``code`` (importable as ``module_name``) in the sandbox.

    Args:
        code: source of the code under test, written to ``<module_name>.py``.
        tests: source of the pytest file (imports the CUT with ``from solution import ...``).
        timeout_s: wall-clock budget for the whole run, all repeats included.
        memory_mb: address-space limit of every sandboxed process.
        repeats: run the tests this many times (each in a fresh forked process, pytest start-up paid
            once); a test passes only if it passes every time, ``flaky`` says whether outcomes varied.
        module_name: import name of the CUT.

    Never raises for anything the tests do; problems are reported in ``reason``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    per_job = max(0.5, float(timeout_s) - 0.5)
    jobs = [{"source": None, "stop_first": False, "timeout_s": per_job} for _ in range(repeats)]
    raw = execute_jobs(code, tests, jobs, timeout_s=timeout_s, memory_mb=memory_mb, module_name=module_name)
    return _to_test_run(raw, repeats)


def _to_test_run(raw: dict, repeats: int) -> TestRun:
    run = TestRun(duration_s=raw["duration_s"], completed=raw["completed"], timed_out=raw["timed_out"],
                  output=raw["output"])
    reasons = [raw["reason"]] if raw["reason"] else []
    merged: dict[str, TestOutcome] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    seen_outcomes: dict[str, set] = {}
    for job in raw["jobs"]:
        if job["status"] == "timeout":
            run.timed_out = True
            reasons.append(f"repeat {job['i'] + 1}: timed out after {job['duration_s']:.1f}s")
        elif job["status"] == "crash":
            reasons.append(f"repeat {job['i'] + 1}: test process ended before pytest finished"
                           f" ({job.get('exit') or 'no final report'}; os._exit or a crash?)")
        run.repeat_durations_s.append(sum(float(t[2]) for t in job["tests"]))
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
    finished = [j for j in raw["jobs"] if j["status"] == "ok"]
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
