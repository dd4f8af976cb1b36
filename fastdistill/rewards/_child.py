"""Sandbox worker, executed as a script: ``python -I _child.py <result_fd> <cmd_fd> --fastdistill-sandbox=<token>``.

It is started by :mod:`fastdistill.rewards.sandbox` (never imported by the library) inside fresh
user/mount/network/PID namespaces when the kernel allows them. Before any untrusted code runs it:

1. reads and deletes its configuration file (the only place the message nonce is written);
2. makes every mount read-only except its working directory, becomes the unprivileged uid/gid the
   parent mapped into its user namespace (when it could: a root host; the working directory is
   handed to that uid), then drops all capabilities for good;
3. sets resource limits, makes itself non-dumpable, installs audit-hook guards (network, signals,
   and - without a mount namespace - writes outside the working directory);
4. imports pytest and starts one session with ``--noconftest``, no plugin autoloading and the
   cache provider disabled. Its own plugin takes over collection and serves *pairs* (code, tests,
   jobs) read from ``cmd_fd``, one after another, each in a fresh randomly named directory:

   * a *zygote* is forked per pair; it installs the code under test and collects the tests once
     (the first untrusted code to run). From the second pair on it is forked ahead of time, right
     after the previous pair's clean-up (a *spare*), and if the caller stays idle it warms up with
     a trusted collection whose traces it removes (see :meth:`_Server._start_spare`);
   * per *job* (the original code, a repeat, or a mutant) the zygote forks a short-lived child that
     swaps in the job's code (re-executing the test module against it, see :class:`_Collected`),
     runs the already-collected items (stopping at the first failure for mutants) and streams
     per-test outcomes back through a private pipe, under a wall-clock timeout and, for mutants,
     a CPU-time budget (``ITIMER_PROF``) so hot infinite loops end within ~50 ms of CPU;
   * after the pair, the worker (PID 1 of its namespace) kills every other process in the
     namespace and empties its working directory, then reports the pair, so nothing survives
     into the next pair (nor the caller's return).

   The worker itself never executes untrusted code, and it enforces each pair's wall-clock
   budget on the zygote.

Results go to the parent through ``result_fd``, a pipe opened before any untrusted code exists,
closed in every zygote and child; each line starts with a newline and the per-run nonce.

Pair specs, jobs and results are read and written in the wire form whose one description is the
docstring of ``fastdistill/rewards/protocol.py`` (this script cannot import fastdistill).
"""

import ctypes
import gc
import json
import linecache
import math
import os
import re
import resource
import select
import signal
import sys
import time
import types

_CFG_NAME = ".fastdistill_sandbox.json"
_WARM_AFTER_S = 0.1  # a spare zygote that has waited this long for its pair warms up (see _Server._start_spare)


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


_MS = {"rdonly": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "remount": 32, "bind": 4096, "rec": 16384,
       "private": 1 << 18, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
_ST_TO_MS = ((1, 1), (2, 2), (4, 4), (8, 8), (1024, 1024), (2048, 2048), (4096, 1 << 21))  # statvfs bit -> MS_*
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _mount(libc, src, tgt, fstype, flags, data=None):
    def enc(v):
        return None if v is None else os.fsencode(v)

    if libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {tgt}: {os.strerror(err)}")


def _sealed_paths():
    """What the sealed view shows of the host, read-only: the Python installation, every
    ``sys.path`` entry, and the shared libraries the interpreter links against."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable)),
             "/usr/lib", "/usr/lib64", "/lib", "/lib64"}
    paths.update(p for p in sys.path if p)
    keep = []
    for path in sorted(paths, key=len):
        if not os.path.isabs(path) or not os.path.lexists(path) or os.path.realpath(path) == "/tmp":
            continue  # (the host's /tmp itself is never shown: the view has its own)
        keep.append(path)
    return keep


def _seal_view(cfg):
    """``pivot_root`` into a minimal tree (needs user + mount namespaces; we are PID 1 of a new PID ns).

    The new root is a small tmpfs holding: the Python installation, ``sys.path`` entries and the
    system's shared libraries bound read-only (nosuid, nodev); the worker directory bound read-write
    (nosuid, nodev); a size-capped tmpfs ``/tmp`` and ``/dev/shm``; a ``/dev`` with only null,
    zero, full, random and urandom; a fresh read-only ``/proc`` of our PID namespace. Nothing else of
    the host is reachable. Raises OSError when the kernel refuses a step (the caller falls back).
    """
    umask = os.umask(0o022)  # the tree's own directories stay searchable by the unprivileged uid
    try:
        _build_view(cfg)
    finally:
        os.umask(umask)


def _build_view(cfg):
    libc = _libc()
    ms = _MS
    root = cfg["root_dir"]
    _mount(libc, "none", "/", None, ms["rec"] | ms["private"])
    _mount(libc, "fastdistill", root, "tmpfs", ms["nosuid"] | ms["nodev"], "size=16m,mode=0755")

    def locked_flags(path):
        flags = 0
        st = os.statvfs(path).f_flag
        for st_bit, ms_bit in _ST_TO_MS:
            if st & st_bit:
                flags |= ms_bit
        return flags

    def make_target(src, dst):
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "a"):
                pass

    def bind(src, flags, extra=0):
        dst = root + src
        make_target(src, dst)
        _mount(libc, src, dst, None, ms["bind"])
        _mount(libc, None, dst, None, ms["bind"] | ms["remount"] | flags | locked_flags(dst) | extra)

    # /tmp first: an interpreter or sys.path entry that lives under /tmp (a virtual environment made
    # there) is then bound on top of the fresh tmpfs instead of being hidden by it
    tmp = root + "/tmp"
    os.makedirs(tmp, exist_ok=True)
    _mount(libc, "tmpfs", tmp, "tmpfs", ms["nosuid"] | ms["nodev"], f"size={int(cfg.get('tmp_mb', 64))}m,mode=1777")
    links = []
    for path in _sealed_paths():
        inside = root + path
        if os.path.lexists(inside):  # under a directory bound already (or made for a link)
            continue
        if os.path.islink(path):  # e.g. /lib -> usr/lib: the same link inside, its target bound too
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            links.append((os.readlink(path), inside))
            target = os.path.realpath(path)
            if not os.path.lexists(root + target):
                bind(target, ms["rdonly"] | ms["nosuid"] | ms["nodev"])
            continue
        bind(path, ms["rdonly"] | ms["nosuid"] | ms["nodev"])
    for target, inside in links:
        if not os.path.lexists(inside):
            os.symlink(target, inside)
    bind(cfg["workdir"], ms["nosuid"] | ms["nodev"])  # the only host directory that is writable
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount(libc, "tmpfs", dev, "tmpfs", ms["nosuid"], "size=64k,mode=0755")
    for name in _DEVICES:
        with open(os.path.join(dev, name), "a"):
            pass
        _mount(libc, "/dev/" + name, os.path.join(dev, name), None, ms["bind"])
    os.makedirs(dev + "/shm", exist_ok=True)
    _mount(libc, "tmpfs", dev + "/shm", "tmpfs", ms["nosuid"] | ms["nodev"], "size=16m,mode=1777")
    _mount(libc, None, dev, None, ms["remount"] | ms["nosuid"] | ms["rdonly"], "size=64k,mode=0755")
    os.makedirs(root + "/proc", exist_ok=True)
    _mount(libc, "proc", root + "/proc", "proc", ms["nosuid"] | ms["nodev"] | ms["noexec"] | ms["rdonly"])
    os.chdir(root)
    if libc.syscall(155, b".", b".") != 0:  # SYS_pivot_root (x86_64): the old root stacks under the new
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    if libc.umount2(b".", 2) != 0:  # MNT_DETACH: drop the host's tree
        err = ctypes.get_errno()
        raise OSError(err, f"umount old root: {os.strerror(err)}")
    os.chdir("/")
    _mount(libc, None, "/", None, ms["remount"] | ms["rdonly"] | ms["nosuid"] | ms["nodev"], "size=16m,mode=0755")


def _mapped(kind, inner):
    """Whether ``inner`` is mapped in this process's user namespace (``kind``: ``"uid"`` or ``"gid"``)."""
    try:
        with open(f"/proc/self/{kind}_map") as fh:
            for line in fh:
                first, _, count = (int(x) for x in line.split())
                if first <= inner < first + count:
                    return True
    except (OSError, ValueError):
        pass
    return False


def _blocked_for(uid, gid, paths):
    """The first of ``paths`` that ``uid``/``gid`` cannot read (and search or execute: directories, the
    interpreter), "" if none. Looked at with those as our effective ids for the moment (we are uid 0 of
    the namespace: switching back restores our capabilities)."""
    os.setresgid(-1, gid, -1)
    try:
        os.setresuid(-1, uid, -1)
        try:
            for path in paths:
                mode = os.R_OK | (os.X_OK if path == sys.executable or os.path.isdir(path) else 0)
                if not os.access(path, mode, effective_ids=True):
                    return path
            return ""
        finally:
            os.setresuid(-1, 0, -1)
    finally:
        os.setresgid(-1, 0, -1)


def _unprivileged_ids(cfg):
    """``((uid, gid), "")`` the worker is to become (``cfg["drop_ids"]``), or ``(None, why not)``.

    Only if the parent could map them into our user namespace, and only if they can still read the
    Python installation and ``sys.path`` (what tests import and run) in the view we built. Either
    way, the host's supplementary groups are dropped here when the ids are mapped.
    """
    if not cfg.get("drop_ids"):
        return None, "the parent cannot map an unprivileged uid here"
    uid, gid = cfg["drop_ids"]
    if not (_mapped("uid", uid) and _mapped("gid", gid)):
        return None, f"uid {uid} / gid {gid} is not mapped in the sandbox's user namespace"
    try:
        os.setgroups([])
        blocked = _blocked_for(uid, gid, [*_sealed_paths(), sys.executable])
    except OSError as exc:
        return None, f"cannot switch to uid {uid}: {exc}"
    if blocked:
        return None, f"uid {uid} cannot read {blocked}"
    return (uid, gid), ""


def _drop_capabilities(ids=None, workdir=None):
    """Lock securebits and clear every capability so root-in-namespace cannot undo the sandbox; with
    ``ids`` (uid, gid) first become that user, with no supplementary groups, and hand it ``workdir``.

    Returns "" or why ``ids`` could not be taken (the capabilities are dropped either way).
    """
    libc = _libc()
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(28, 0x2F, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT|NO_SETUID_FIXUP (+locks)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    why = ""
    if ids is not None:
        uid, gid = ids
        try:
            os.chown(workdir, uid, gid)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # (NO_SETUID_FIXUP: capabilities stay until capset below)
        except OSError as exc:
            why = f"could not become uid {uid}: {exc}"
            try:  # back to the sandbox's uid 0 and its working directory
                os.setresgid(0, 0, 0)
                os.chown(workdir, 0, 0)
            except OSError:
                pass

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)
    data = (Data * 2)()
    if libc.syscall(126, ctypes.byref(header), data) != 0:  # SYS_capset (x86_64)
        raise OSError(ctypes.get_errno(), "capset failed")
    return why


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
        except Exception:  # noqa: BLE001 - a path the hook cannot resolve is not writable
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
            if event == "os.kill" and pid == -1:
                if me != 1:  # only the worker, as PID 1 of its own PID namespace, may signal "everyone"
                    raise PermissionError("signalling other processes is disabled in the fastdistill sandbox")
            elif event == "os.kill" and pid not in (me, 0) and pid != -os.getpgrp():
                if not _is_descendant(abs(pid), me):
                    raise PermissionError("signalling other processes is disabled in the fastdistill sandbox")
            if event == "os.killpg" and pid not in (os.getpgrp(), 0) and not _is_descendant(pid, me):
                # a group led by one of our own descendants (how the worker ends a job) is fine
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


def _read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_bytes(fd):
    """The body of one length-prefixed frame (8-byte big-endian length, then the body); ``None`` at end of input."""
    header = _read_exact(fd, 8)
    if header is None:
        return None
    return _read_exact(fd, int.from_bytes(header, "big"))


def _frame(body):
    return len(body).to_bytes(8, "big") + body


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _writer(fd, nonce):
    """A function that writes one framed message line (``\\n<nonce> <json>\\n``) to ``fd``.

    The leading newline means stray bytes written to the pipe by untrusted code can never glue
    themselves onto the front of a real message.
    """
    prefix = b"\n" + nonce + b" "

    def emit(message):
        view = memoryview(prefix + json.dumps(message).encode() + b"\n")
        while view:
            view = view[os.write(fd, view):]

    return emit


def _read_messages(fd, nonce, deadline, on_message, max_bytes=4_000_000):
    """Read framed lines from ``fd`` until EOF, ``deadline`` or ``on_message`` returns True.

    ``deadline`` is a ``time.monotonic()`` value, or a function returning the current one.
    Returns ``"eof"``, ``"timeout"``, ``"overflow"`` or ``"stop"``.
    """
    buf = b""
    prefix = nonce + b" "
    total = 0
    while True:
        remaining = (deadline() if callable(deadline) else deadline) - time.monotonic()
        if remaining <= 0:
            return "timeout"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return "eof"
        total += len(chunk)
        if total > max_bytes:
            return "overflow"
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.startswith(prefix):
                continue  # forged or garbage line
            try:
                msg = json.loads(line[len(prefix):])
            except ValueError:
                continue
            if on_message(msg):
                return "stop"


def _poll_messages(fd, nonce):
    """The types of the framed messages ``fd`` holds right now (without waiting), None at EOF."""
    said, buf, prefix = [], b"", nonce + b" "
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    for line in buf.split(b"\n"):
        if line.startswith(prefix):
            try:
                said.append(json.loads(line[len(prefix):]).get("t"))
            except (ValueError, AttributeError):
                continue
    return said


def _fork_child(body, close=()):
    """Fork a child in its own process group that closes ``close`` (the parent's pipe ends it must not hold)
    and runs ``body(write_fd)``, the write end of a fresh pipe; it exits 0, or 3 when anything escapes
    ``body`` (reported by the reader as a crash). Returns ``(pid, read_fd)``: the parent keeps the read end."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            for fd in close:
                os.close(fd)
            body(write_fd)
        except BaseException:  # noqa: BLE001 - anything escaping is reported as a crash
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    return pid, read_fd


def _kill_and_wait(pid):
    """SIGKILL the process group led by ``pid`` (and ``pid``), reap it, return its wait status."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        _, wstatus = os.waitpid(pid, 0)
    except ChildProcessError:
        wstatus = 0
    return wstatus


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_info(wstatus):
    if os.WIFSIGNALED(wstatus):
        return f"killed by signal {os.WTERMSIG(wstatus)}"
    if os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) != 0:
        return f"exit status {os.WEXITSTATUS(wstatus)}"
    return ""


def _oom_kills(fd):
    """The worker's memory cgroup OOM-kill counter (``oom_kill`` line), or None without a cgroup."""
    if fd is None:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
    except OSError:
        return None
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill":
            return int(value)
    return None


def _install_module(name, path, source):
    """Execute ``source`` into a fresh module registered as ``sys.modules[name]``; error text or None."""
    module = types.ModuleType(name)
    module.__file__ = path
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)
    sys.modules[name] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - sandboxed by design
    except BaseException as exc:  # noqa: BLE001
        return f"module failed to import: {exc!r}"[:2000]
    return None


# the worker's modules (name -> module) when it starts serving pairs, before any untrusted code exists
_WORKER_MODULES = {}
_KEEP = ("__name__", "__file__", "__loader__", "__spec__", "__package__", "__cached__", "__builtins__")


class _Collected:
    """What the zygote collected once, and how a job child swaps the CUT underneath it.

    A swap executes the new CUT into a fresh module object, drops helper modules the tests loaded
    from the pair directory, re-executes each test module's (assertion-rewritten) code in its own
    namespace, so every ``from solution import ...`` and module-level value is recomputed exactly
    as a fresh import would, then points the collected items (and test classes) at the new objects.
    If anything collection depends on changed (test names, marks/parametrize values, fixture
    params), the child recollects from scratch instead, so outcomes always equal a fresh collection.
    """

    def __init__(self, session, items, pair_dir, module_name):
        self.items = list(items)
        self.module_name = module_name
        self.modules, self.classes, seen = [], [], set()
        for item in self.items:
            node = item.parent
            while node is not None and node is not session:
                kind = type(node).__name__
                if kind == "Module" and id(node) not in seen:
                    seen.add(id(node))
                    self.modules.append((node.obj, self._code_of(session, node)))
                elif kind == "Class" and id(node) not in seen:
                    seen.add(id(node))
                    self.classes.append(node)
                node = node.parent
        test_names = {m.__name__ for m, _ in self.modules}
        self.helpers = _pair_modules(pair_dir, skip=test_names | {module_name})
        self.signature = self._signature()

    @staticmethod
    def _code_of(session, node):
        from pathlib import Path

        try:
            from _pytest.assertion.rewrite import _rewrite_test

            return _rewrite_test(Path(str(node.path)), session.config)[1]
        except Exception:  # noqa: BLE001 - fall back to plain compilation (assert messages only differ)
            path = str(node.path)
            with open(path, encoding="utf-8") as fh:
                return compile(fh.read(), path, "exec", dont_inherit=True)

    def _signature(self):
        parts = []
        for module, _ in self.modules:
            for key, value in module.__dict__.items():
                if (key == "pytestmark" or key.startswith(("test", "Test"))
                        or hasattr(value, "_fixture_function_marker")):
                    parts.append((key, repr(getattr(value, "pytestmark", None)),
                                  repr(getattr(value, "_fixture_function_marker", None)),
                                  repr(value) if key == "pytestmark" else ""))
                    if isinstance(value, type):
                        for attr, member in vars(value).items():
                            parts.append((key, attr, repr(getattr(member, "pytestmark", None)),
                                          repr(getattr(member, "_fixture_function_marker", None))))
        return parts

    def swap(self, source, path):
        """Install ``source`` as the CUT; return ``(items, error)`` (``items is None``: recollect)."""
        error = _install_module(self.module_name, path, source)
        if error:
            return None, error
        for name in self.helpers:
            sys.modules.pop(name, None)
        try:
            for module, code in self.modules:
                namespace = module.__dict__
                kept = {k: namespace[k] for k in _KEEP if k in namespace}
                namespace.clear()
                namespace.update(kept)
                exec(code, namespace)  # noqa: S102 - sandboxed by design
        except BaseException as exc:  # noqa: BLE001 - what a fresh import would report as a collection error
            return None, f"test module failed to import: {exc!r}"[:2000]
        if self._signature() != self.signature:
            return None, None
        for node in self.classes:
            node._obj = getattr(node.parent.obj, node.name)
        for item in self.items:
            item.__dict__.pop("_instance", None)
            item._obj = None
            item._obj = item._getobj()
        return self.items, None


class _Server:
    """pytest plugin that replaces collection with a loop serving (code, tests) pairs.

    For each pair the worker forks a *zygote* that installs the CUT, collects the tests once and
    then forks one short-lived child per job (baseline, repeat or mutant) that swaps the CUT if
    needed and runs the collected items. The worker never executes untrusted code.
    """

    def __init__(self, cfg, result_fd, cmd_fd):
        self._cfg = cfg
        self._result_fd = result_fd
        self._cmd_fd = cmd_fd
        self._send = _writer(result_fd, cfg["nonce"].encode())
        self._collect_errors = None
        self._zygote_fd = -1
        self._mounts = None  # the sealed view's mount points, read once (nothing inside can mount)

    # -- worker side ------------------------------------------------------------------------------
    def pytest_collection(self, session):
        _WORKER_MODULES.update(sys.modules)
        # Fill inspect's file -> module cache for the worker's modules, once: pytest's report of a failed collection
        # or test calls inspect.getmodule, which otherwise resolves the real path of every loaded module again in
        # each zygote and job child (~30 ms a call). A code object from no module makes it scan them all.
        import inspect
        inspect.getmodule(compile("", os.path.join(self._cfg["workdir"], "_fastdistill_no_module.py"), "exec"))
        gc.collect()
        gc.freeze()  # forked children then do not touch (copy) the worker's pages when collecting garbage
        self._send({"t": "ready", "view": self._cfg.get("view", ""), "uid": os.getuid(),
                    "uid_note": self._cfg.get("uid_note", "")})
        # The first spare comes after the first pair: until the parent has moved this worker into its
        # cgroups (when it sees "ready", before it sends a pair) nothing may be forked, or it escapes them.
        spare = None
        while True:
            body = _recv_bytes(self._cmd_fd)
            if body is None:
                break
            self._run_pair(session, json.loads(body), body, spare)  # replies, then cleans up
            spare = self._start_spare(session)
        if spare is not None:
            _kill_and_wait(spare["pid"])
        self._send({"t": "done"})
        return True

    def _start_spare(self, session):
        """Fork the next pair's zygote ahead of time (a *spare*), once the previous pair is cleaned up.

        The spare blocks reading the pair's spec from a private pipe and then becomes that pair's
        zygote. If no pair comes within :data:`_WARM_AFTER_S` (the caller is idle), it warms itself
        up (:meth:`_warm_up`: a trusted collection, so pytest's caches are filled and the pages a
        collection touches are copied before the pair arrives), saying ``warming`` and ``warm`` on
        its own nonce-tagged pipe. None with ``cfg["prefork"]`` off (a zygote is forked per pair).
        """
        if not self._cfg.get("prefork"):
            return None
        nonce = os.urandom(8).hex().encode()
        spec_r, spec_w = os.pipe()
        # the spare: no untrusted code runs in it before it has its pair (if it fails, a zygote is forked afresh)
        pid, read_fd = _fork_child(lambda fd: self._spare(session, spec_r, fd, nonce),
                                   close=(spec_w, self._result_fd, self._cmd_fd))
        os.close(spec_r)
        return {"pid": pid, "read_fd": read_fd, "spec_w": spec_w, "nonce": nonce}

    def _take_spare(self, spare, pair_dir, test_file, body):
        """Hand the pair to ``spare``: ``(pid, read_fd, nonce, "warm" or "spare")``, or None when it
        died or is in the middle of its warm-up (it is killed; the caller forks a zygote afresh)."""
        said = _poll_messages(spare["read_fd"], spare["nonce"])
        usable = said is not None and ("warm" in said or "warming" not in said)
        if usable:
            paths = json.dumps({"pair_dir": pair_dir, "test_file": test_file}).encode()
            try:
                _write_all(spare["spec_w"], _frame(paths) + _frame(body))
            except OSError:
                usable = False
        os.close(spare["spec_w"])
        if usable:
            return spare["pid"], spare["read_fd"], spare["nonce"], "warm" if "warm" in said else "spare"
        _kill_and_wait(spare["pid"])
        os.close(spare["read_fd"])
        workdir = self._cfg["workdir"]
        for entry in os.listdir(workdir):  # a warm-up cut short leaves its directory (w + 16 hex digits)
            if entry.startswith("w") and len(entry) == 17:
                _rmtree(os.path.join(workdir, entry))
        return None

    def _clean_between_pairs(self, pair_dir):
        """Nothing a pair started or wrote may survive into the next pair."""
        if self._cfg["namespaces"] and os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)  # PID 1 of our own PID namespace: every other process in it
            except OSError:
                pass
            self._empty_workdir()  # while they die (emptied again once they are all gone)
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
        else:
            _reap()
        self._empty_workdir()
        if self._cfg.get("view") == "sealed":
            if self._mounts is None:
                self._mounts = _mount_points()
            _empty_scratch(self._mounts)

    def _empty_workdir(self):
        workdir = self._cfg["workdir"]
        keep = {os.path.basename(self._cfg["ini_file"])}
        for entry in os.listdir(workdir):
            if entry not in keep:
                _remove(os.path.join(workdir, entry))

    def _run_pair(self, session, spec, body, spare):
        """Run one pair on ``spare`` (or a zygote forked now), clean up after it, send its ``pair`` message."""
        start = time.monotonic()
        deadline = start + float(spec["timeout_s"])
        name = spec["module_name"]
        pair_dir = os.path.join(self._cfg["workdir"], "p" + os.urandom(8).hex())
        os.mkdir(pair_dir, 0o700)
        if spec["write_module"]:
            with open(os.path.join(pair_dir, name + ".py"), "w", encoding="utf-8") as fh:
                fh.write(spec["code"])
        test_file = os.path.join(pair_dir, f"test_{name}_tests.py")
        with open(test_file, "w", encoding="utf-8") as fh:
            fh.write(spec["tests"])
        oom_before = _oom_kills(self._cfg.get("oom_fd"))
        zygote = self._take_spare(spare, pair_dir, test_file, body) if spare is not None else None
        if zygote is not None:
            pid, read_fd, nonce, kind = zygote
        else:
            kind = "fresh"
            nonce = os.urandom(8).hex().encode()
            # zygote: runs untrusted code (the test module's import)
            pid, read_fd = _fork_child(lambda fd: self._zygote(session, spec, pair_dir, test_file, fd, nonce),
                                       close=(self._result_fd, self._cmd_fd))
        jobs, finished = [], []
        inline = {"start": None, "wall": 0.0, "tests": [], "collect_errors": []}  # see _inline

        def on_message(msg):
            kind = msg.get("t")
            if kind == "job":
                jobs.append(msg)
            elif kind == "end":
                finished.append(True)
                return True
            elif kind == "job_start" and inline["start"] is None and self._inline(spec):
                inline.update(start=time.monotonic(), wall=float(msg.get("wall") or 0.0))
            elif kind in ("test", "collect_error") and inline["start"] is not None and not jobs:
                inline["tests" if kind == "test" else "collect_errors"].append(msg.get("r"))
            return False

        def current_deadline():  # the pair's, or the inline job's once it started (whichever is first)
            return deadline if inline["start"] is None else min(deadline, inline["start"] + inline["wall"])

        max_bytes = 4_000_000 * max(1, len(spec["jobs"])) + (5_000_000 if self._inline(spec) else 0)
        status = _read_messages(read_fd, nonce, current_deadline, on_message, max_bytes=max_bytes)
        exit_info = ""  # a zygote that reported its end is done: how it then ends says nothing
        if not finished:
            wstatus = _kill_and_wait(pid)
            exit_info = _exit_info(wstatus)
            if inline["start"] is not None and not jobs and (status != "timeout" or current_deadline() < deadline):
                # the inline job did not end: report it as _run_job reports a job child that did not
                job_status = "timeout" if status == "timeout" else "crash"
                oom_now = _oom_kills(self._cfg.get("oom_fd"))
                if job_status == "crash" and oom_now is not None and oom_before is not None and oom_now > oom_before:
                    job_status = "memory"
                jobs.append({"status": job_status, "tests": inline["tests"], "collect_errors": inline["collect_errors"],
                             "duration_s": time.monotonic() - inline["start"], "exit": exit_info,
                             "recollected": False, "cpu_s": None, "t": "job", "i": 0})
                finished.append(True)
                status, exit_info = "eof", ""
        after = _oom_kills(self._cfg.get("oom_fd"))
        if finished and not (self._cfg["namespaces"] and os.getpid() == 1):
            _kill_and_wait(pid)  # (as PID 1 of its namespace, the clean-up below ends every process at once)
        os.close(read_fd)
        self._clean_between_pairs(pair_dir)  # before the reply: once the caller has it, nothing of the pair is left
        self._send({"jobs": jobs, "completed": bool(finished), "timed_out": status == "timeout",
                    "exit": exit_info, "duration_s": time.monotonic() - start,
                    "oom_kills": (after - oom_before) if after is not None and oom_before is not None else 0,
                    "zygote": kind, "t": "pair", "id": spec["id"]})

    # -- zygote side ---------------------------------------------------------------------------------
    def pytest_collectreport(self, report):
        if self._collect_errors is not None and report.failed:
            self._collect_errors.append([report.nodeid, str(report.longreprtext)[-2000:]])

    def _plugin_ids(self, session):
        return {id(p) for p in session.config.pluginmanager.get_plugins()}

    def _collect(self, session, test_file):
        """Collect ``test_file``; returns (items, collect_errors, plugins_registered)."""
        self._collect_errors = []
        before = self._plugin_ids(session)
        try:
            items = list(session.perform_collect([test_file]))
        except BaseException as exc:  # noqa: BLE001
            items = []
            self._collect_errors.append([os.path.basename(test_file), f"collection failed: {exc!r}"[:2000]])
        errors = self._collect_errors
        self._collect_errors = None
        if self._plugin_ids(session) - before:
            errors.append(["<plugins>", "the tests registered pytest plugins or hooks; not allowed"])
            return items, errors, True
        return items, errors, False

    def _spare(self, session, spec_r, fd, nonce):
        """A spare zygote (see :meth:`_start_spare`): warm up, say so, wait for the pair, serve it."""
        os.setpgid(0, 0)
        if not select.select([spec_r], [], [], _WARM_AFTER_S)[0]:  # idle: use the time to warm up
            emit = _writer(fd, nonce)
            emit({"t": "warming"})
            self._warm_up(session)
            emit({"t": "warm"})
        header = _recv_bytes(spec_r)
        body = _recv_bytes(spec_r) if header is not None else None
        os.close(spec_r)
        if body is None:  # the worker is gone or took a fresh zygote instead
            return
        paths = json.loads(header)
        self._zygote(session, json.loads(body), paths["pair_dir"], paths["test_file"], fd, nonce)

    _WARM_TESTS = ("from _fastdistill_warm_cut import f\n\n\n"
                   "def test_fastdistill_warm_up():\n    assert f(1) == 2\n")

    def _warm_up(self, session):
        """Collect a trusted one-test file (and build the state a CUT swap uses) in this process, then
        undo every trace of it but the warmth: its modules, ``sys.path`` entry, directory, and the
        session's and assertion rewriter's collection state are put back as they were, so the
        pair's collection sees what a freshly forked zygote sees (the tests in ``test_containment``
        and ``test_sandbox`` compare both ways). Costs ~15 ms of this process, off the pair's path."""
        warm_dir = os.path.join(self._cfg["workdir"], "w" + os.urandom(8).hex())
        saved_path, saved_modules = list(sys.path), set(sys.modules)
        saved_session = dict(vars(session))
        rewriter = next((h for h in sys.meta_path if type(h).__name__ == "AssertionRewritingHook"), None)
        saved_rewriter = {k: (v.copy() if isinstance(v, (set, dict, list)) else v)
                          for k, v in vars(rewriter).items()} if rewriter is not None else None
        os.mkdir(warm_dir, 0o700)
        try:
            cut = os.path.join(warm_dir, "_fastdistill_warm_cut.py")
            with open(cut, "w", encoding="utf-8") as fh:
                fh.write("def f(x):\n    return x + 1\n")
            test_file = os.path.join(warm_dir, "test_fastdistill_warm_up.py")
            with open(test_file, "w", encoding="utf-8") as fh:
                fh.write(self._WARM_TESTS)
            items = list(session.perform_collect([test_file]))
            for item in items:
                item.location
            collected = _Collected(session, items, warm_dir, "_fastdistill_warm_cut")
            collected.swap("def f(x):\n    return x + 2\n", cut)
        finally:
            for name in set(sys.modules) - saved_modules:
                if os.path.realpath(str(getattr(sys.modules[name], "__file__", None) or "/")).startswith(
                        os.path.realpath(warm_dir) + os.sep):
                    del sys.modules[name]
            sys.path[:] = saved_path
            sys.path_importer_cache.pop(warm_dir, None)
            vars(session).clear()
            vars(session).update(saved_session)
            if rewriter is not None:
                vars(rewriter).clear()
                vars(rewriter).update(saved_rewriter)
            linecache.cache.pop(cut, None)
            _rmtree(warm_dir)
        if os.path.exists(warm_dir):
            raise OSError(f"could not remove the warm-up directory {warm_dir}")

    def _zygote(self, session, spec, pair_dir, test_file, fd, nonce):
        os.setpgid(0, 0)
        cpu = int(float(spec["timeout_s"])) + 2
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        except (ValueError, OSError):
            pass
        self._cfg.pop("nonce", None)  # the worker's pipe is closed here; drop its nonce anyway
        del self._send
        self._zygote_fd = fd
        os.chdir(pair_dir)
        emit = _writer(fd, nonce)
        name = spec["module_name"]
        path = os.path.join(pair_dir, name + ".py")
        installed = None
        errors, forbidden, items = [], False, []
        if not spec["write_module"]:
            installed = spec["code"]
            error = _install_module(name, path, installed)
            if error:
                errors.append([name, error])
        if not errors:
            items, errors, forbidden = self._collect(session, test_file)
        collected = None
        swaps = any(job.get("source") is not None and job["source"] != installed for job in spec["jobs"])
        if items and not forbidden and swaps:  # only jobs that swap the CUT use it (~25 ms per pair)
            try:
                collected = _Collected(session, items, pair_dir, name)
            except Exception:  # noqa: BLE001 - unusual layout: every swap recollects
                collected = None
        if items:
            for item in items:  # computed once here instead of in every job child (same test file, same lines)
                try:
                    item.location
                except Exception:  # noqa: BLE001 - computed (or reported) in the child as before
                    pass
        gc.freeze()
        gate = spec.get("gate")
        # Jobs may form groups (one CUT version each: the original, a rewrite of it): a job with
        # ``"base": True`` is its group's baseline (by default job 0, group 0), whose wall and CPU time
        # set the budgets of the group's mutants (``timeout_s`` None); with a gate, a job is skipped
        # when the baseline of any group in its ``needs`` (by default ``[0]`` after job 0) did not pass.
        # A job with ``needs_killed`` (a rewrite of another job's mutant) runs only if that mutant was killed.
        baselines, failed, killed = {}, set(), set()
        for index, job in enumerate(spec["jobs"]):
            group = job.get("group", 0)
            is_base = job.get("base", index == 0)
            needs = job.get("needs", [] if index == 0 else [0])
            if gate and any(g in failed for g in needs):
                continue  # tests that fail on the (original) code are not run against its mutants
            if job.get("needs_killed") is not None and job["needs_killed"] not in killed:
                emit({"t": "job", "i": index, "status": "skipped", "tests": [], "collect_errors": [],
                      "duration_s": 0.0, "exit": ""})
                continue
            wall, cpu_budget = job.get("timeout_s"), None
            if wall is None:  # mutants: multiples of the baseline's wall and CPU time (hot loops end early)
                baseline_s, baseline_cpu_s = baselines[group]
                wall = min(gate["max_s"], max(gate["min_s"], gate["factor"] * baseline_s))
                cpu_budget = min(wall, max(gate.get("cpu_min_s", gate["min_s"]), gate["factor"] * baseline_cpu_s))
            swap = job.get("source") is not None and job["source"] != installed
            if errors and (forbidden or job.get("stop_first") or not items):
                result = {"status": "ok", "tests": [], "collect_errors": errors, "duration_s": 0.0, "exit": ""}
            elif self._inline(spec):
                result = self._run_inline(session, items, job, path, test_file, float(wall), errors, emit)
            else:
                result = self._run_job(session, items, collected, job, swap, path, test_file, float(wall),
                                       cpu_budget, errors)
            result.update({"t": "job", "i": index})
            if job.get("stop_first"):  # a mutant: the verdict is given here, and only here
                result["killed"] = self._killed(result)
                if result["killed"]:
                    killed.add(index)
            emit(result)
            if is_base:
                baselines[group] = (result["duration_s"], result.get("cpu_s") or result["duration_s"])
                if gate and not self._all_passed(result):
                    failed.add(group)
        emit({"t": "end"})

    @staticmethod
    def _killed(result):
        """The one rule that says whether a mutant job killed its mutant: a test failed or errored, the
        module (or the test module against it) did not import, or the job timed out, crashed or was
        killed for exceeding the memory budget."""
        return (result["status"] in ("timeout", "crash", "memory") or bool(result["collect_errors"])
                or any(t[1] in ("failed", "error") for t in result["tests"]))

    @staticmethod
    def _all_passed(result):
        outcomes = [t[1] for t in result["tests"]]
        return (result["status"] == "ok" and not result["collect_errors"] and "passed" in outcomes
                and not any(o in ("failed", "error") for o in outcomes))

    def _inline(self, spec):
        """Whether the pair's only job runs in the zygote itself rather than in a child forked for it
        (``cfg["inline"]``): a plain run of the tests as written (``run_tests`` with one repeat), where
        no other job needs the collected state kept pristine. Saves a fork and a process teardown
        (~6 ms); the worker then supervises the job as the zygote would a job child (its wall-clock
        timeout from the ``job_start`` message, a crash, the memory budget) and reports the same
        job result. The tests could forge that job's result either way (see the module docstring)."""
        jobs = spec["jobs"]
        return bool(self._cfg.get("inline")) and len(jobs) == 1 and jobs[0].get("source") is None and \
            not jobs[0].get("stop_first") and jobs[0].get("timeout_s") is not None and \
            jobs[0].get("needs_killed") is None

    def _run_inline(self, session, items, job, path, test_file, wall, errors, emit):
        """Run the pair's only job here, in the zygote (see :meth:`_inline`); returns its job result."""
        start = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        emit({"t": "job_start", "wall": wall})
        tests, collect_errors, ended = [], [], []
        size = [0]
        prefix_len = 18  # a job child's line: "\n", its 16-hex-digit nonce, " " (see _run_job and _writer)

        def job_emit(msg):
            # what a job child's parent would read: its size is capped the same way (_read_messages)
            size[0] += prefix_len + len(json.dumps(msg).encode()) + 1
            if size[0] > 4_000_000:
                emit({"t": "job", "i": 0, "status": "crash", "tests": tests, "collect_errors": collect_errors,
                      "duration_s": time.monotonic() - start, "exit": "killed by signal 9", "recollected": False,
                      "cpu_s": None})
                emit({"t": "end"})
                os._exit(0)
            if msg.get("t") == "end":
                ended.append(msg)
                return
            (tests if msg.get("t") == "test" else collect_errors).append(msg["r"])
            emit(msg)  # the worker reports what ran if the job never ends

        self._job_child(session, items, None, job, False, path, test_file, wall, None, errors, job_emit,
                        cpu_offset=cpu_before)
        cpu = ended[0].get("cpu_s") if ended else None
        return {"status": "ok", "tests": tests, "collect_errors": collect_errors,
                "duration_s": time.monotonic() - start, "exit": "", "recollected": False,
                "cpu_s": cpu if isinstance(cpu, (int, float)) else None}

    def _run_job(self, session, items, collected, job, swap, path, test_file, wall, cpu_budget, errors):
        job_nonce = os.urandom(8).hex().encode()
        start = time.monotonic()
        pid, read_fd = _fork_child(
            lambda fd: self._job_child(session, items, collected, job, swap, path, test_file, wall, cpu_budget,
                                       errors, _writer(fd, job_nonce)),
            close=(self._zygote_fd,))
        tests, collect_errors, finished, cpu = [], [], [], []
        oom_before = _oom_kills(self._cfg.get("oom_fd"))

        def on_message(msg):
            kind = msg.get("t")
            if kind == "test":
                tests.append(msg["r"])
            elif kind == "collect_error":
                collect_errors.append(msg["r"])
            elif kind == "end":
                finished.append(bool(msg.get("recollected")))
                cpu.append(msg.get("cpu_s"))
                return True
            return False

        status = _read_messages(read_fd, job_nonce, start + wall, on_message)
        duration = time.monotonic() - start
        wstatus = _kill_and_wait(pid)
        os.close(read_fd)
        _reap()
        if status == "timeout" or (cpu_budget is not None and os.WIFSIGNALED(wstatus)
                                   and os.WTERMSIG(wstatus) == signal.SIGPROF and not finished):
            status = "timeout"
        elif status == "overflow" or not finished:
            status = "crash"
            oom_after = _oom_kills(self._cfg.get("oom_fd"))
            if oom_after is not None and oom_before is not None and oom_after > oom_before:
                status = "memory"  # the cgroup's OOM killer ended it: the memory budget was exceeded
        else:
            status = "ok"
        return {"status": status, "tests": tests, "collect_errors": collect_errors, "duration_s": duration,
                "exit": _exit_info(wstatus), "recollected": bool(finished and finished[0]),
                "cpu_s": cpu[0] if cpu and isinstance(cpu[0], (int, float)) else None}

    # -- job child side ------------------------------------------------------------------------------
    def _job_child(self, session, items, collected, job, swap, path, test_file, wall, cpu_budget, errors, emit,
                   cpu_offset=0.0):
        """Run the job's tests in this process, reporting through ``emit``. ``cpu_offset``: CPU time this
        process had used before (a zygote running its pair's only job, see :meth:`_inline`)."""
        from _pytest.runner import runtestprotocol

        os.setpgid(0, 0)
        cpu = int(wall) + 1 + math.ceil(cpu_offset)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        except (ValueError, OSError):
            pass
        if cpu_budget is not None:
            signal.setitimer(signal.ITIMER_PROF, cpu_budget)  # default action of SIGPROF: terminate
        stop_first = job.get("stop_first")
        recollected = False
        if swap:
            new_items, error = collected.swap(job["source"], path) if collected is not None else (None, None)
            name = os.path.basename(path)[:-3]
            if collected is None:  # no collected state to reuse: install the CUT, then recollect
                error = _install_module(name, path, job["source"])
            if error:
                emit({"t": "collect_error", "r": ["<tests>" if error.startswith("test module") else name, error]})
                emit({"t": "end"})
                return
            if new_items is None:  # collection depends on the CUT: collect afresh, like a new process
                recollected = True
                _drop_pair_modules(os.path.dirname(path), name)
                new_items, errors, forbidden = self._collect(session, test_file)
                if forbidden:
                    stop_first = True
            items = new_items
        for error in errors:
            emit({"t": "collect_error", "r": error})
        if errors and stop_first:
            emit({"t": "end"})
            return
        if stop_first:
            # Only the outcome of a mutant matters: skip pytest's costly failure formatting (source
            # reading, AST statement ranges, assertion re-interpretation); outcomes are unchanged.
            for item in items:
                item.repr_failure = _short_failure
                item._repr_failure_py = _short_failure
        plugins_before = self._plugin_ids(session)
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
            if self._plugin_ids(session) - plugins_before:
                emit({"t": "collect_error", "r": [item.nodeid, "the tests registered pytest plugins; not allowed"]})
                break
            emit({"t": "test", "r": [item.nodeid, outcome, duration, message]})
            if stop_first and outcome in ("failed", "error"):
                break
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({"t": "end", "recollected": recollected, "cpu_s": usage.ru_utime + usage.ru_stime - cpu_offset})



def _short_failure(excinfo, *args, **kwargs):
    try:
        return excinfo.exconly()[-1500:]
    except Exception:  # noqa: BLE001
        return "failed"


def _pair_modules(pair_dir, skip=()):
    """Names of the modules in ``sys.modules`` imported from ``pair_dir`` (by real path), except ``skip``.

    Only modules the worker did not have (:data:`_WORKER_MODULES`) are looked at: the worker's own
    hundreds were imported before the pair directory existed, and resolving each one's real path
    cost ~20 ms per pair."""
    prefix = os.path.realpath(pair_dir) + os.sep
    return [name for name, mod in list(sys.modules.items())
            if name not in skip and _WORKER_MODULES.get(name) is not mod
            and os.path.realpath(str(getattr(mod, "__file__", None) or "/")).startswith(prefix)]


def _drop_pair_modules(pair_dir, keep):
    """Forget every module imported from ``pair_dir`` except ``keep`` (the CUT)."""
    for name in _pair_modules(pair_dir, skip=(keep,)):
        del sys.modules[name]


_SCRATCH = ("/tmp", "/dev/shm")  # the sealed view's own tmpfs mounts, shared by every pair of a worker


def _mount_points():
    """Mount points of this mount namespace, as this process sees them (``/proc/self/mountinfo``)."""
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:  # field 5 is the mount point; space, tab, newline and backslash are octal escapes
                points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def _empty_scratch(mounts):
    """Remove whatever a pair left in the sealed view's ``/tmp`` and ``/dev/shm``, so nothing passes from one
    pair to the next. What is bound under ``/tmp`` (the worker directory, an interpreter or ``sys.path`` entry
    living there) and the directories leading to it stay. ``mounts``: :func:`_mount_points`."""

    def clean(directory):
        try:
            entries = os.listdir(directory)
        except OSError:
            return
        for entry in entries:
            path = os.path.join(directory, entry)
            if path in mounts:
                continue
            if any(m.startswith(path + "/") for m in mounts):
                clean(path)
            else:
                _remove(path)

    for top in _SCRATCH:
        clean(top)
    _remove_sysv_ipc()


def _remove_sysv_ipc():
    """Remove the System V shared memory segments, semaphore sets and message queues a pair left in the
    worker's IPC namespace (the host's is never reachable; this keeps pairs apart)."""
    libc = _libc()
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                         ("msg", lambda i: libc.msgctl(i, 0, None))):  # 0: IPC_RMID
        try:
            with open(f"/proc/sysvipc/{kind}", encoding="utf-8") as fh:
                ids = [int(line.split()[1]) for line in fh.read().splitlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            remove(ipc_id)


def _remove(path):
    """Remove a file, a link or a whole directory; whatever cannot be removed is left."""
    if os.path.isdir(path) and not os.path.islink(path):
        _rmtree(path)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main():
    result_fd, cmd_fd = int(sys.argv[1]), int(sys.argv[2])
    workdir = os.getcwd()
    cfg_path = os.path.join(workdir, _CFG_NAME)
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    os.unlink(cfg_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    isolated, sealed, uid_note = False, "", "no namespaces"
    if cfg["namespaces"]:
        if cfg.get("root_dir"):
            try:
                _seal_view(cfg)
                sealed = "sealed"
            except OSError as exc:  # this host refuses a step: fall back to the read-only host view
                sealed = f"not sealed: {exc}"
        try:
            if sealed != "sealed":
                _isolate_filesystem(workdir)
            ids, uid_note = _unprivileged_ids(cfg)
            uid_note = _drop_capabilities(ids, workdir) or uid_note
            os.chdir(workdir)  # re-enter through the writable bind mount
            isolated = True
        except OSError as exc:
            sys.stderr.write(f"fastdistill sandbox: namespace isolation failed, using guards: {exc}\n")
    cfg["namespaces"] = isolated
    cfg["uid_note"] = uid_note
    cfg["view"] = sealed or ("not sealed: no namespaces" if not isolated else "not sealed: disabled (SEALED_VIEW)")
    _libc().prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: /proc/<pid>/fd of the worker is off limits
    _set_limits(cfg)
    sys.dont_write_bytecode = False  # the rewritten test module is cached once for all forked jobs
    try:
        import pytest  # noqa: PLC0415 - imported after the limits on purpose
    except BaseException as exc:  # noqa: BLE001 - the parent reports this as SandboxUnavailableError
        sys.stderr.write(f"fastdistill sandbox: cannot import pytest in {sys.executable}: {exc!r}"
                         " (install pytest into that interpreter)\n")
        sys.stderr.flush()
        os._exit(2)

    _install_guards(workdir, guard_writes=not isolated)
    plugin = _Server(cfg, result_fd, cmd_fd)
    args = [
        workdir, "-q", "-c", cfg["ini_file"], "--rootdir", workdir, "--noconftest",
        "-p", "no:cacheprovider", "-p", "no:pastebin", "-p", "no:junitxml", "-p", "no:faulthandler",
        "-o", "addopts=", "-W", "ignore::DeprecationWarning",
    ]
    pytest.main(args, plugins=[plugin])
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
