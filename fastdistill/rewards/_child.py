"""Sandbox worker, executed as a script: ``python -I _child.py <result_fd> --fastdistill-sandbox=<token>``.

It is started by :mod:`fastdistill.rewards.sandbox` (never imported by the library) inside fresh
user/mount/network/PID namespaces when the kernel allows them. Before any untrusted code runs it:

1. reads and deletes its configuration file (the only place the message nonce is written);
2. makes every mount read-only except its working directory, then drops all capabilities for good;
3. sets resource limits, makes itself non-dumpable, installs audit-hook guards (network, signals,
   and - without a mount namespace - writes outside the working directory);
4. imports pytest and starts one session with ``--noconftest``, no plugin autoloading and the
   cache provider disabled. Its own plugin takes over collection: for each *job* (the original
   module, a repeat, or a mutant) it forks a child that installs the module, collects and runs the
   tests and streams per-test outcomes back through a private pipe. The worker itself never
   executes untrusted code; only these children do, each in its own process group with its own
   CPU limit and wall-clock timeout.

Results go to the parent through ``result_fd``, a pipe opened before any untrusted code exists,
closed in every child; each line starts with the per-run nonce.
"""

import ctypes
import gc
import json
import linecache
import os
import resource
import select
import signal
import sys
import time
import types

_CFG_NAME = ".fastdistill_sandbox.json"


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _isolate_filesystem(workdir):
    """Bind ``workdir`` on itself, then remount every other mount read-only (needs a mount ns)."""
    libc = _libc()
    ms = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
    ms_remount, ms_bind, ms_rec, ms_private = 32, 4096, 16384, 1 << 18

    def mount(src, tgt, flags):
        if libc.mount(src, tgt, None, flags, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), tgt)

    mount(b"none", b"/", ms_rec | ms_private)
    wd = os.fsencode(workdir)
    mount(wd, wd, ms_bind | ms_rec)
    with open("/proc/self/mountinfo", "rb") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        fields = line.split()
        mountpoint = fields[4].decode("unicode_escape").encode("latin-1")
        if mountpoint == wd:
            continue
        flags = ms_remount | ms_bind | 1
        for opt in fields[5].split(b","):
            flags |= ms.get(opt.decode(), 0)
        try:
            mount(None, mountpoint, flags)
        except OSError:
            # A mount we cannot remount read-only (e.g. locked): nothing under it is ours anyway.
            pass


def _drop_capabilities():
    """Lock securebits and clear every capability so root-in-namespace cannot undo the sandbox."""
    libc = _libc()
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(28, 0x2F, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT|NO_SETUID_FIXUP (+locks)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)
    data = (Data * 2)()
    if libc.syscall(126, ctypes.byref(header), data) != 0:  # SYS_capset (x86_64)
        raise OSError(ctypes.get_errno(), "capset failed")


def _set_limits(cfg):
    mem = int(cfg["memory_mb"]) * 1024 * 1024
    fsize = int(cfg["fsize_mb"]) * 1024 * 1024
    for res, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NPROC, int(cfg["nproc"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, int(cfg["cpu_s"])),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes raise OSError instead of killing


def _install_guards(workdir, guard_writes):
    """Audit hooks: no outgoing network, no signals to other processes, optional write jail."""
    workdir = os.path.realpath(workdir)
    allowed_devices = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty")

    def write_allowed(path):
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return real == workdir or real.startswith(workdir + os.sep) or real in allowed_devices

    def hook(event, args):
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind"):
            addr = args[1] if len(args) > 1 else None
            if not (isinstance(addr, (str, bytes))):  # AF_UNIX paths stay allowed (pytest does not use them)
                raise PermissionError("network access is disabled in the fastdistill sandbox")
        elif event in ("os.kill", "os.killpg"):
            pid = args[0]
            me = os.getpid()
            if event == "os.kill" and pid not in (me, 0) and pid != -os.getpgrp():
                if not _is_descendant(pid, me):
                    raise PermissionError("signalling other processes is disabled in the fastdistill sandbox")
            if event == "os.killpg" and pid not in (os.getpgrp(), 0):
                raise PermissionError("signalling other processes is disabled in the fastdistill sandbox")
        elif guard_writes and event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if writing and isinstance(path, (str, bytes)) and not write_allowed(path):
                raise PermissionError(f"writing outside the sandbox directory is disabled: {path!r}")
        elif guard_writes and event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
                                        "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree"):
            targets = [a for a in args if isinstance(a, (str, bytes))]
            if any(not write_allowed(t) for t in targets):
                raise PermissionError(f"modifying files outside the sandbox directory is disabled: {targets!r}")
        elif guard_writes and event in ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
                                        "ctypes.dlopen"):
            raise PermissionError(f"{event} is disabled in the fastdistill sandbox without namespaces")

    sys.addaudithook(hook)


def _is_descendant(pid, ancestor):
    try:
        while pid > 1:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            if pid == ancestor:
                return True
    except (OSError, ValueError):
        return False
    return False


class _Jobs:
    """pytest plugin that replaces collection with one forked child per job."""

    def __init__(self, cfg, result_fd):
        self._cfg = cfg
        self._result_fd = result_fd
        self._nonce = cfg["nonce"].encode()
        self._collect_errors = None

    # -- worker side ------------------------------------------------------------------------------
    def _send(self, message):
        data = self._nonce + b" " + json.dumps(message).encode() + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._result_fd, view)
            view = view[written:]

    def pytest_collection(self, session):
        gc.collect()
        gc.freeze()  # forked children then do not touch (copy) the worker's pages when collecting garbage
        gate = self._cfg.get("baseline_gate")
        for index, job in enumerate(self._cfg["jobs"]):
            if job.get("timeout_s") is None:  # mutants: a multiple of the baseline's wall time
                job = dict(job, timeout_s=min(gate["max_s"], max(gate["min_s"], gate["factor"] * baseline_s)))
            result = self._run_job(session, job)
            result.update({"t": "job", "i": index})
            self._send(result)
            if index == 0:
                baseline_s = result["duration_s"]
                if gate and not self._all_passed(result):
                    break  # tests that fail on the original code are not run against mutants
        self._send({"t": "done"})
        return True

    @staticmethod
    def _all_passed(result):
        outcomes = [t[1] for t in result["tests"]]
        return (result["status"] == "ok" and not result["collect_errors"] and "passed" in outcomes
                and not any(o in ("failed", "error") for o in outcomes))

    def _run_job(self, session, job):
        job_nonce = os.urandom(8).hex().encode()
        read_fd, write_fd = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # child: the only place untrusted code runs
            code = 0
            try:
                os.close(read_fd)
                os.close(self._result_fd)
                self._child(session, job, write_fd, job_nonce)
            except BaseException:  # noqa: BLE001 - anything escaping is reported as a crash
                code = 3
            finally:
                os._exit(code)
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        deadline = start + float(job["timeout_s"])
        buf = b""
        tests, collect_errors, finished, status, timing = [], [], False, "ok", {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 4_000_000:
                status = "crash"
                break
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.startswith(job_nonce + b" "):
                    continue  # forged or garbage line
                try:
                    msg = json.loads(line[len(job_nonce) + 1 :])
                except ValueError:
                    continue
                if msg.get("t") == "test":
                    tests.append(msg["r"])
                elif msg.get("t") == "collect_error":
                    collect_errors.append(msg["r"])
                elif msg.get("t") == "end":
                    finished = True
                    timing = {"collect_s": msg.get("collect_s"), "end_lag_s": time.time() - msg.get("t0", 0), "child_s": msg.get("child_s"), "since_start": time.monotonic() - start}
        duration = time.monotonic() - start
        for target in (pid,):
            try:
                os.killpg(target, signal.SIGKILL)
            except OSError:
                pass
        try:
            _, wstatus = os.waitpid(pid, 0)
        except ChildProcessError:
            wstatus = 0
        os.close(read_fd)
        self._reap()
        if status == "ok" and not finished:
            status = "crash"
        exit_info = ""
        if os.WIFSIGNALED(wstatus):
            exit_info = f"killed by signal {os.WTERMSIG(wstatus)}"
        elif os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) != 0:
            exit_info = f"exit status {os.WEXITSTATUS(wstatus)}"
        return {"status": status, "tests": tests, "collect_errors": collect_errors,
                "duration_s": duration, "exit": exit_info, "timing": timing}

    @staticmethod
    def _reap():
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- child side ---------------------------------------------------------------------------------
    def pytest_collectreport(self, report):
        if self._collect_errors is not None and report.failed:
            self._collect_errors.append([report.nodeid, str(report.longreprtext)[-2000:]])

    def _child(self, session, job, write_fd, job_nonce):
        from _pytest.runner import runtestprotocol

        t_child = time.perf_counter()
        os.setpgid(0, 0)
        cpu = int(float(job["timeout_s"])) + 1
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        except (ValueError, OSError):
            pass
        del self._nonce  # the parent's nonce is useless here (its pipe is closed), drop it anyway

        def emit(message):
            data = job_nonce + b" " + json.dumps(message).encode() + b"\n"
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]

        name = self._cfg["module_name"]
        if job.get("source") is not None:
            path = os.path.join(self._cfg["workdir"], name + ".py")
            module = types.ModuleType(name)
            module.__file__ = path
            source = job["source"]
            linecache.cache[path] = (len(source), None, source.splitlines(True), path)
            sys.modules[name] = module
            try:
                exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - sandboxed by design
            except BaseException as exc:  # noqa: BLE001
                emit({"t": "collect_error", "r": [name, f"module failed to import: {exc!r}"[:2000]]})
                emit({"t": "end"})
                return
        t_collect = time.perf_counter()
        self._collect_errors = []
        plugins_before = {id(p) for p in session.config.pluginmanager.get_plugins()}
        items = session.perform_collect()
        if {id(p) for p in session.config.pluginmanager.get_plugins()} - plugins_before:
            self._collect_errors.append(["<plugins>", "the tests registered pytest plugins or hooks; not allowed"])
            job = dict(job, stop_first=True)
        t_collect = time.perf_counter() - t_collect
        for error in self._collect_errors:
            emit({"t": "collect_error", "r": error})
        if self._collect_errors and job.get("stop_first"):
            emit({"t": "end"})
            return
        for index, item in enumerate(items):
            nextitem = items[index + 1] if index + 1 < len(items) else None
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
            outcome, message, duration = "passed", "", 0.0
            for rep in reports:
                duration += rep.duration
                if rep.failed:
                    if outcome == "passed":
                        outcome = "failed" if rep.when == "call" else "error"
                        message = str(rep.longreprtext)[-1500:]
                elif rep.skipped and outcome == "passed":
                    outcome = "skipped"
            if {id(p) for p in session.config.pluginmanager.get_plugins()} - plugins_before:
                emit({"t": "collect_error", "r": [item.nodeid, "the tests registered pytest plugins; not allowed"]})
                break
            emit({"t": "test", "r": [item.nodeid, outcome, duration, message]})
            if job.get("stop_first") and outcome in ("failed", "error"):
                break
        emit({"t": "end", "collect_s": t_collect, "t0": time.time(), "child_s": time.perf_counter() - t_child})


def main():
    result_fd = int(sys.argv[1])
    workdir = os.getcwd()
    cfg_path = os.path.join(workdir, _CFG_NAME)
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    os.unlink(cfg_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    isolated = False
    if cfg["namespaces"]:
        try:
            _isolate_filesystem(workdir)
            _drop_capabilities()
            os.chdir(workdir)  # re-enter through the writable bind mount
            isolated = True
        except OSError as exc:
            sys.stderr.write(f"fastdistill sandbox: namespace isolation failed, using guards: {exc}\n")
    _libc().prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: /proc/<pid>/fd of the worker is off limits
    _set_limits(cfg)
    sys.dont_write_bytecode = False  # the rewritten test module is cached once for all forked jobs
    import pytest  # noqa: PLC0415 - imported after the limits on purpose

    _install_guards(workdir, guard_writes=not isolated)
    plugin = _Jobs(cfg, result_fd)
    args = [
        cfg["test_file"], "-q", "-c", cfg["ini_file"], "--rootdir", workdir, "--noconftest",
        "-p", "no:cacheprovider", "-p", "no:pastebin", "-p", "no:junitxml", "-p", "no:faulthandler",
        "-o", "addopts=", "-W", "ignore::DeprecationWarning",
    ]
    pytest.main(args, plugins=[plugin])
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
