"""The sandbox a run executes in: its configuration and the child's side of every fork.

Everything below :meth:`Sandbox.wait_and_run` runs in a forked child of the launcher's pristine
forker (:mod:`workers.forker`), before any user code. Nothing here may log: the logging module's
handlers and locks belong to the worker. A setup failure is written to the status descriptor
(fd 3) and the child ``_exit``s; the launcher turns it into a ``sandbox_error`` outcome. The
status descriptor is closed before the script's own code runs (close-on-exec in exec mode), so
a script cannot write a note and forge its outcome.

Status descriptor notes are one kind byte and a text: ``E`` setup error, ``F`` script file
(or a command actor's program) missing.
"""

import _signal  # type: ignore[import-not-found]  # see _undo_launcher_signals
import contextlib
import ctypes
import fcntl
import marshal
import os
import pwd
import resource
import signal
import socket
import stat
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from protocol.messages import Run
from workers.atfork import catch_up_in_child
from workers.preload import DEFAULT_PRELOAD
from workers.script_main import BOOTSTRAP, MAGIC, Modules, module_name, run_main
from workers.seccomp import deny_user_namespaces

NOTE_SETUP = b"E"
NOTE_MISSING = b"F"
NOTE_CODE = b"C"  # then the SHA256 (64 hex digits) of the script the run executes, when it is
# not the one the supervisor sent (the file changed meanwhile); another note may follow
OOM_SCORE_ADJ = 1000  # runs (and the forker) go first when the host runs out of memory
EXIT_SANDBOX = 71  # EX_OSERR: what a child exits with when its sandbox could not be set up
NOTE_MAX = 4096  # the launcher reads at most this much of a child's notes
STATUS_FD = 3  # a child's status pipe; then, until its run starts, the go pipe and run memfd
GO_FD = 4
RUN_FD = 5
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
# keyctl(2): no binding in the os module; its number where we know it (x86-64, and the
# architectures of the generic table: arm64, riscv64, loongarch64).
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "loongarch64": 219}.get(
    os.uname().machine
)
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEYCTL_GET_PERSISTENT = 22
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
HIDEPID = "hidepid=invisible"  # each run's /proc shows its own user's processes only
# The shared scratch folders a run could fill the host's disk (or memory) through: with a tmp_mb
# limit they are one private tmpfs of that size, the first mounted and the others bound to it.
# Every folder anyone may write on a usual host (/var/lock is a link to /run/lock): a run's own.
TMP_ROOTS: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PRIVATE_TMPDIR = "/tmp/run"  # a run's TMPDIR in its tmpfs when the launcher's is not in /tmp
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
COMPILED_MAX = 64  # scripts whose compiled code a launcher keeps
# Larger scripts (and anything not a regular file) are read and compiled by the run's child, as
# before: the launcher serves every run of its worker, so untrusted source must not cost it
# unbounded time or memory outside any run's limits.
COMPILE_MAX_BYTES = 64 << 10
CPU_HARD_MARGIN_S = 1  # RLIMIT_CPU hard limit above the soft one: SIGXCPU first, SIGKILL later
_MAX_FD = 1 << 20  # close_range bound; the kernel clips it, so its size costs nothing

# Signals whose disposition the launcher and its forker change (handlers feeding their wakeup
# fds); a child puts them back. The launcher resets every other signal to its default once, at
# start-up, so this short list is all a child has to undo.
LAUNCHER_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP)


FileId = tuple[int, int, int, int, int]  # see file_id


class Order(NamedTuple):
    """What a child needs of its run, flattened: loading it is one C call (``marshal``), where
    decoding a protocol message in a freshly forked child costs ~100 copy-on-write faults."""

    run_id: str
    attempt: int
    actor: str
    script: str
    cwd: str
    mode: str
    input_json: str
    env: dict[str, str]  # what the run adds to the allow-listed environment: see Sandbox.order
    cpu_s: int | None
    memory_mb: int | None
    nofile: int | None
    nproc: int | None
    fsize_mb: int | None
    tmp_mb: int | None  # size of the private tmpfs over TMP_ROOTS; None: the host's own
    network: str
    uid: int | None  # this run's own uid (= gid) from the launcher's block; None: no own uid
    tmpdir: str  # private, created by the launcher for this run (and owned by its uid)
    modules: tuple[str, ...]  # a stored bundle's other files, relative to the script's folder
    argv: tuple[str, ...]  # a command actor: exec ``script`` with these arguments
    # The private tmpfs, planned by the launcher (Sandbox.order): the top-level folders of the
    # roots to bind back in, and the run's TMPDIR inside the tmpfs ("": keep ``tmpdir``).
    keep: tuple[str, ...] = ()
    tmp_inside: str = ""
    # The script as the launcher read and compiled it (marshalled): b"" when it could not (a
    # missing file, a SyntaxError), and the child reads it and reports that as before.
    source: bytes = b""
    code: bytes = b""
    # Which file that was (FileId): a script that is not ``stored`` is opened again by the
    # child as the run's user, and the launcher's copy used only if it is still this file.
    file_id: tuple[int, ...] = ()
    stored: bool = False  # Run.stored: the supervisor's private copy, read before the switch
    # The SHA256 the supervisor read (Run.script_sha256; "": no check) and the one of the
    # launcher's ``source``: a file-mode child that runs other code says so (NOTE_CODE).
    script_sha256: str = ""
    source_sha256: str = ""

    def dumps(self) -> bytes:
        data: bytes = marshal.dumps(tuple(self))
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """How one launcher runs scripts; frozen, read once by the worker and passed in."""

    worker_id: str
    env_allow: tuple[str, ...]  # names copied from the launcher's own environment into a script's
    run_as: tuple[int, int] | None = None  # (uid, gid) the children switch to; None = stay as is
    run_uids: tuple[int, ...] = ()  # root only: one uid (= gid) per concurrent run of this
    # launcher, from run_as_range; each run gets a free one of these instead of run_as
    kill_grace_s: float = 2.0  # SIGTERM -> SIGKILL delay for timeouts and kill_all
    heartbeat_timeout_s: float = 30.0  # the worker replaces a launcher silent for this long
    python: str = sys.executable  # interpreter for exec mode
    preload: tuple[str, ...] = DEFAULT_PRELOAD  # imported by the launcher: fork mode starts warm
    hide_processes: bool = False  # runs' /proc shows their own user's processes only (see
    # processes_hidable: the supervisor tried it at start-up)


class Sandbox:
    """What every child of one launcher shares, computed once when the launcher starts.

    Per-run work in the child is then a handful of syscalls: no lookups, no imports.
    """

    __slots__ = (
        "_base_env", "_caps", "_compiled", "_hard", "_hide", "_ids", "_keep", "_keep_tops", "_libc",
        "_mounts", "_namespaces", "_python", "_tmp_roots",
    )  # fmt: skip

    def __init__(self, config: SandboxConfig, environ: Mapping[str, str]) -> None:
        self._python = config.python
        ids = config.run_as
        if ids is not None and os.geteuid() != 0 and ids == (os.getuid(), os.getgid()):
            ids = None  # already that user; setgroups() would need a privilege we lack
        self._ids = ids
        env = {name: environ[name] for name in config.env_allow if name in environ}
        if config.run_as is not None:
            try:
                env["HOME"] = pwd.getpwuid(config.run_as[0]).pw_dir
            except KeyError:
                env["HOME"] = "/"  # a uid without a passwd entry still needs a HOME
        self._base_env = env
        self._hard = {
            res: resource.getrlimit(res)[1]
            for res in (
                resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NOFILE,
                resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE,
            )
        }  # fmt: skip
        self._keep: tuple[object, ...] = ()
        self._caps = _last_capability() if _has_capability(CAP_SETPCAP) else -1
        # Without CAP_SYS_ADMIN (not root) no namespaces: neither a System V IPC namespace of
        # its own nor a private tmpfs (tmp_mb is not enforced).
        self._namespaces = private_tmp_available()
        self._tmp_roots = tuple(root for root in TMP_ROOTS if os.path.isdir(root))
        self._mounts = self._namespaces and "/tmp" in self._tmp_roots
        self._hide = config.hide_processes and self._mounts
        # The interpreter (exec mode, subprocesses) stays reachable even if it lives in /tmp.
        self._keep_tops = _tops(
            tuple(p for p in (self._python, sys.prefix, sys.base_prefix, *sys.path) if p),
            self._tmp_roots,
        )
        # (path, source) -> its marshalled code and SHA256
        self._compiled: dict[tuple[str, bytes], tuple[bytes, str]] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)
        # Resolved here, not in each child: a child's first lookup of a libc function builds
        # its ctypes wrapper (~30 copy-on-write faults).
        for name in ("mount", "prctl", "unshare"):
            getattr(self._libc, name)

    def order(self, run: Run, uid: int | None, tmpdir: str) -> Order:
        """What the run's child needs, flattened, with as much as can be done here, in the
        launcher, done here: the private tmpfs planned, the environment built, the script read
        and compiled. Work in a freshly forked child costs it copy-on-write faults besides
        (compile() alone dozens); the launcher is forked from by nobody, and sees the same file
        system (the forker's mounts are slaves of the host's)."""
        lim = run.limits
        keep: tuple[str, ...] = ()
        inside = ""
        if lim.tmp_mb is not None and self._mounts:
            roots = self._tmp_roots
            tops = self._keep_tops | _tops((run.cwd, os.path.dirname(run.script)), roots)
            keep = tuple(sorted(tops))
            inside = tmpdir if tmpdir.startswith("/tmp/") else PRIVATE_TMPDIR
            if "/tmp" in tops or "/".join(inside.split("/")[:3]) in tops:
                inside = ""  # the host's /tmp is kept (the run's folder is /tmp itself)
        env = _run_environment(run, uid, inside or tmpdir)
        source, code, file_id, sha = (b"", b"", (), "") if run.argv else self._compile(run.script)
        return Order(
            run.run_id, run.attempt, run.actor, run.script, run.cwd, run.mode, run.input_json,
            env, lim.cpu_s, lim.memory_mb, lim.nofile, lim.nproc, lim.fsize_mb, lim.tmp_mb,
            run.network, uid, tmpdir, run.modules, run.argv, keep, inside, source, code,
            file_id, run.stored, run.script_sha256, sha,
        )  # fmt: skip

    def _compile(self, path: str) -> tuple[bytes, bytes, FileId | tuple[()], str]:
        """The script's source, marshalled code, file id and SHA256, compiled and hashed once
        per content (a small cache: reading is one syscall or three, compiling far more);
        (b"", b"", (), "") when it cannot be read or compiled, which the child then reports as
        it always did.

        Read as root: only the code is kept from it, never shown, and a child whose script is
        not the supervisor's own copy uses it only after opening the same file as its user."""
        found = _read_small_file(path, COMPILE_MAX_BYTES)
        if found is None:
            return b"", b"", (), ""
        source, file_id = found
        key = (path, source)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                code = marshal.dumps(compile(source, path, "exec", dont_inherit=True))
            except Exception:  # SyntaxError, RecursionError, MemoryError...
                return b"", b"", (), ""  # the child compiles it again, under its limits
            if len(self._compiled) >= COMPILED_MAX:
                del self._compiled[next(iter(self._compiled))]  # the oldest
            compiled = self._compiled[key] = (code, _sha256(source))
        return source, compiled[0], file_id, compiled[1]

    def adopt_process(self) -> None:
        """Make the launcher process itself the template every fork-mode child starts from.

        Whatever a child changes costs it copy-on-write page faults (milliseconds on some
        virtual machines), so the per-run work is done here once instead: the environment is
        already the allow-listed one, the standard streams are already those of a fresh
        interpreter writing to pipes, and compile() is warm. The objects a child replaces
        (``__main__``, ``argv``, the original streams) stay referenced here, so a child never
        frees (and so touches) them.
        """
        self._keep = (sys.modules.get("__main__"), sys.argv, sys.stdin, sys.stdout, sys.stderr)
        # The first builtin compile() of a process builds the AST node types (~1 ms); pay it once.
        compile("pass", "<warm-up>", "exec")
        os.environ.clear()
        _scrub_initial_environment()
        os.environ.update(self._base_env)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(  # noqa: SIM115
            2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )

    def wait_and_run(
        self,
        stdin: int,
        stdout: int,
        stderr: int,
        status: int,
        go: int,
        run_fd: int,
        *,
        owes_hooks: bool = False,
    ) -> NoReturn:
        """The whole life of a spare from its fork on; never returns.

        The forker forks each child ahead of its run, so the first part is off the run's
        critical path: a session of its own, the forker's signal handlers undone, the
        descriptors moved to 0-5 and every other one closed. (The hardening that needs no run
        is inherited from the forker: see :meth:`harden`.) Then it blocks on
        the go pipe (EOF: retired unused), reads its Run from the run memfd, writes the input
        into its own stdin memfd, and becomes the run: script read, limits, namespaces (IPC;
        mounts for the private tmpfs; network), user, cwd,
        environment, then exec or the script itself.
        The run arrives as an :class:`Order`, already validated by the worker and the launcher.
        ``owes_hooks``: forked without at-fork hooks, so a fork-mode script gets
        :func:`workers.atfork.catch_up_in_child` first.
        """
        note_fd = status
        step = "session"
        try:
            os.setsid()  # its own session and group: one killpg takes the whole tree
            step = "signals"
            _undo_launcher_signals()
            step = "descriptors"
            _take_descriptors((stdin, stdout, stderr, status, go, run_fd))
            note_fd = STATUS_FD
            step = "waiting for a run"
            if not os.read(GO_FD, 1):
                os._exit(0)  # retired before it got a run
            step = "reading the run"
            run = _read_order()
            os.close(GO_FD)
            _write_all(0, run.input_json.encode())  # pwrite: the offset stays at 0 for the script
            step = "signals"
            fork_script = run.mode == "fork" and not run.argv
            _python_signals(fork_mode=fork_script)
            if owes_hooks and fork_script:
                step = "at-fork hooks"
                catch_up_in_child()
            step = "script"  # stored code before the switch: it is private to the supervisor
            source, code, modules = _read_stored(run) if run.stored else (b"", b"", {})
            step = "limits"
            self._apply_limits(run)
            step = "namespaces"
            mounts = run.tmp_mb is not None and self._mounts
            self._unshare(run, mounts=mounts)
            if mounts:
                step = "private tmp"
                self._private_tmp(run)
            if run.network == "none":
                step = "network"
                _loopback_up()
            step = "user"
            self._become_user(run.uid)
            step = "cwd"  # after the switch: the folder must be enterable by the run's user
            os.chdir(run.cwd)
            if run.argv:
                step = "program"
                self._exec_program(run)
            if not run.stored:
                step = "script"  # as the run's user: through a symlink too, only what it may read
                source, code = _read_own_script(run)
                if run.script_sha256:  # a check asked: the launcher hashed its copy (code), if used
                    ran = run.source_sha256 if code else _sha256(source)
                    if ran != run.script_sha256:  # the file changed since the supervisor read it
                        _note(note_fd, NOTE_CODE, ran)
            if run.mode == "exec":
                step = "exec"
                self._exec(run, source, code, modules)
            step = "environment"
            os.close(RUN_FD)
            os.environ.update(run.env)  # putenv too, so subprocesses inherit it; the rest is there
            step = "status"
            os.close(STATUS_FD)  # from here on nothing the script does can write a note
        except BaseException as exc:
            missing = step in ("script", "program") and isinstance(exc, FileNotFoundError)
            _note(note_fd, NOTE_MISSING if missing else NOTE_SETUP, f"{step}: {exc}")
            os._exit(EXIT_SANDBOX)
        compiled = marshal.loads(code) if code else None
        os._exit(run_main(run.script, run.cwd, source, modules, compiled))

    def _exec_program(self, run: Order) -> NoReturn:
        """Become a command actor's program, with the sandbox already applied (both modes)."""
        os.close(RUN_FD)
        env = dict(self._base_env)
        env.update(run.env)
        os.set_inheritable(STATUS_FD, False)  # closed by the exec: no note after it
        os.execve(run.script, list(run.argv), env)

    def _exec(self, run: Order, source: bytes, code: bytes, modules: Modules) -> NoReturn:
        """Become a fresh interpreter running the script (exec mode) through BOOTSTRAP."""
        _pass_code(source, run.script, modules, code)
        env = dict(self._base_env)
        env.update(run.env)
        argv = [self._python, "-c", BOOTSTRAP, run.script, run.cwd, MAGIC]
        os.set_inheritable(STATUS_FD, False)  # closed by the exec: no note after it
        os.execve(self._python, argv, env)

    def harden(self) -> None:
        """What no script gets back: new privileges through exec (setuid binaries, file
        capabilities), user namespaces (:mod:`workers.seccomp`), and any capability at all once
        root is dropped; umask 077; and the OOM
        killer's first pick (``oom_score_adj`` 1000): when runs together exhaust the host's
        memory, the kernel kills the biggest of them, not the supervisor. A run may lower it back
        to 0, never below (that needs CAP_SYS_RESOURCE): the systemd unit's OOMScoreAdjust=-500
        keeps the supervisor behind every run even then.

        Called once in the forker, whose children inherit all of it, so runs pay nothing for
        them. Dropping the bounding set leaves a process's own capabilities, which forking,
        and a child's switch to the run's user, still need; that switch then clears them.
        """
        os.umask(0o077)
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
            adj.write(str(OOM_SCORE_ADJ))  # no /proc, or a kernel without it: nothing to do
        self._prctl(PR_SET_NO_NEW_PRIVS, 1)
        deny_user_namespaces()  # see workers.seccomp
        for cap in range(self._caps + 1):
            self._prctl(PR_CAPBSET_DROP, cap)

    def enter_forker_namespace(self) -> None:
        """Called once in the forker (root): a mount namespace of its own whose every mount is a
        slave of the host's, so each child's own namespace, a copy of it, starts as slaves too
        and needs no per-run ``MS_REC | MS_PRIVATE`` walk: nothing a child mounts propagates
        back, while mounts the host makes later still reach the forker and its children."""
        if self._mounts:
            _own_mounts(self._libc, hide_processes=self._hide)

    def _unshare(self, order: Order, *, mounts: bool) -> None:
        """The run's namespaces, in one unshare() (root, before the switch).

        Always (when we may): System V IPC of its own -- shared memory segments, message
        queues, semaphore sets and POSIX message queues -- so a run can neither leave objects
        that outlive it for a later run to read nor fill the host's IPC limits; they go with
        the namespace's last process. With ``mounts``, a mount namespace for the private tmpfs;
        with ``network = "none"``, an empty network namespace (which needs the privilege).
        """
        flags = CLONE_NEWIPC if self._namespaces else 0
        if mounts:
            flags |= CLONE_NEWNS
        if order.network == "none":
            flags |= CLONE_NEWNET
        if flags and self._libc.unshare(flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")

    def _private_tmp(self, order: Order) -> None:
        """Give the run /tmp, /var/tmp, /dev/shm and /run/lock of its own: one fresh tmpfs of
        ``tmp_mb`` MiB in its mount namespace (made by :meth:`_unshare`), so that a script can fill
        neither the host's disk (the state folder's, often) nor another run's TMPDIR, and
        leaves nothing behind: the tmpfs goes with the namespace's last process.

        A top-level folder of those roots holding the run's own folder or script, or the
        interpreter, is bound back in at its place (``order.keep``). The run's TMPDIR is
        ``order.tmp_inside``, made here in the tmpfs (the launcher's path for it when that is in
        /tmp, the real one staying empty, else :data:`PRIVATE_TMPDIR`), or the launcher's own
        when a kept folder holds it. :meth:`order` planned both.
        """
        # Nothing mounted from here on propagates back to the host's namespace: this one is a
        # copy of the forker's, whose mounts are all slaves (see enter_forker_namespace).
        roots = self._tmp_roots
        kept = [(top, os.open(top, os.O_PATH | os.O_CLOEXEC)) for top in order.keep]
        # One tmpfs, so one limit for all: mounted on the first root, a folder of it per root,
        # each bound over its root (the first's last, covering the tmpfs's own top).
        first = roots[0]
        self._mount("tmpfs", first, "tmpfs", MS_NOSUID | MS_NODEV, f"size={order.tmp_mb}m")
        for i, root in (*enumerate(roots[1:], 1), (0, first)):
            part = f"{first}/{i}"
            os.mkdir(part)
            os.chmod(part, 0o1777)  # through the umask of 077
            self._mount(part, root, None, MS_BIND)
        for top, fd in kept:
            if top not in roots:
                with contextlib.suppress(FileExistsError):  # same name in /tmp and /var/tmp
                    os.mkdir(top)
                os.chmod(top, 0o755)  # through the umask of 077
            self._mount(f"/proc/self/fd/{fd}", top, None, MS_BIND | MS_REC)
            os.close(fd)
        tmpdir = order.tmp_inside
        if not tmpdir:
            return  # kept: the host's folder holding the launcher's is bound in
        parent = os.path.dirname(tmpdir)
        os.makedirs(parent, exist_ok=True)
        os.chmod(parent, 0o711)  # through the umask of 077
        os.mkdir(tmpdir, 0o700)
        owner = (order.uid, order.uid) if order.uid is not None else self._ids
        if owner is not None:
            os.chown(tmpdir, *owner)

    def _mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None,
        flags: int,
        data: str | None = None,
    ) -> None:
        """mount(2) through libc (ctypes): the os module has no binding for it."""
        enc = [None if text is None else text.encode() for text in (source, target, fstype, data)]
        result = self._libc.mount(enc[0], enc[1], enc[2], flags, enc[3])
        _checked(f"mount {target}", result)

    def _become_user(self, uid: int | None) -> None:
        """Switch to the run's own uid, killing first whatever an earlier run of that uid left
        (Linux never signals the caller of ``kill(-1)``), or to the fixed ``run_as`` user; then
        take keyrings of its own (:meth:`_fresh_keyrings`)."""
        before = os.getuid()
        self._switch_user(uid)
        self._fresh_keyrings(own_user=os.getuid() != before)

    def _switch_user(self, uid: int | None) -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        elif self._ids is not None:
            os.setgroups([])
            os.setgid(self._ids[1])
            os.setuid(self._ids[0])

    def _fresh_keyrings(self, *, own_user: bool) -> None:
        """Kernel keyrings of the run's own, after the switch. Every process inherits its
        parent's session keyring and may read what root put there (a login's, or ``keyctl add
        ... @s``); and a uid's user keyrings and persistent keyring outlive its processes, so a
        run could leave keys there for the next run given the same uid, another actor's. So:
        a new anonymous session keyring, and (when the run has a user of its own, never ours)
        those of its uid emptied. Where keyctl is missing or forbidden (a seccomp profile),
        scripts cannot reach any keyring either, and there is nothing to do."""
        if SYS_KEYCTL is None:
            return
        keyctl = self._libc.syscall
        if keyctl(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
            return
        if not own_user:
            return  # the launcher's own user (not root, or root runs): its keyrings stay
        for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
            keyctl(SYS_KEYCTL, KEYCTL_CLEAR, ring)
        persistent = keyctl(SYS_KEYCTL, KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_SESSION_KEYRING)
        if persistent > 0:  # linked into the new session keyring: gone with the run
            keyctl(SYS_KEYCTL, KEYCTL_CLEAR, persistent)

    def _prctl(self, option: int, arg: int) -> None:
        """prctl through libc (ctypes): the os module has no binding for it."""
        if self._libc.prctl(option, arg, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl({option}, {arg}): {os.strerror(err)}")

    def _apply_limits(self, order: Order) -> None:
        if order.cpu_s is not None:
            self._set(resource.RLIMIT_CPU, order.cpu_s, order.cpu_s + CPU_HARD_MARGIN_S)
        if order.memory_mb is not None:
            self._set(resource.RLIMIT_AS, order.memory_mb << 20)
        if order.nofile is not None:
            self._set(resource.RLIMIT_NOFILE, order.nofile)
        if order.nproc is not None:
            self._set(resource.RLIMIT_NPROC, order.nproc)
        if order.fsize_mb is not None:
            self._set(resource.RLIMIT_FSIZE, order.fsize_mb << 20)
        self._set(resource.RLIMIT_CORE, 0)

    def _set(self, res: int, soft: int, hard: int | None = None) -> None:
        """Lower a limit; clipped to the launcher's own hard limit, which only root could raise."""
        hard = soft if hard is None else hard
        cap = self._hard[res]
        if cap != resource.RLIM_INFINITY:
            hard = min(hard, cap)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))


def _run_environment(run: Run, uid: int | None, tmpdir: str) -> dict[str, str]:
    """What a run adds to the allow-listed environment (and may override in it)."""
    env = dict(run.env)
    env["ACTOR_NAME"] = run.actor
    env["ACTOR_RUN_ID"] = run.run_id
    env["ACTOR_ATTEMPT"] = str(run.attempt)
    env["TMPDIR"] = env["TEMP"] = env["TMP"] = tmpdir
    if uid is not None:
        env["HOME"] = tmpdir  # a dynamic uid has no home of its own
    return env


def _loopback_up() -> None:
    """Bring up loopback in the run's fresh network namespace (see :meth:`Sandbox._unshare`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _read_small_file(path: str, max_bytes: int) -> tuple[bytes, FileId] | None:
    """A regular file's content and id if it is at most ``max_bytes``; else None, never
    blocking: a FIFO or device planted as a script must not stall (or fill) the launcher."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = os.read(fd, max_bytes + 1)
        return (data, file_id(st)) if len(data) <= max_bytes else None  # else it grew meanwhile
    except OSError:
        return None
    finally:
        os.close(fd)


def _last_capability() -> int:
    """The highest capability number this kernel knows (each must leave the bounding set)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one as of Linux 5.9


def processes_hidable() -> bool:
    """Whether runs can get a /proc of their own that shows a process only to its own user
    (``hidepid=invisible``). In the host's, every command line is readable, the supervisor's
    included -- with a database password on it, if the operator put one there -- and so are
    another actor's runs. Tried once, in a forked child, as the forker does it for every run
    (:meth:`Sandbox.enter_forker_namespace`); call it before the process has threads. Needs
    root and a kernel whose procfs mounts each have their own options (5.8): an older one
    refuses the word ``invisible`` (a numeric ``hidepid`` there would reach the host's /proc).
    """
    if not private_tmp_available():
        return False
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            _own_mounts(ctypes.CDLL(None, use_errno=True), hide_processes=True)
            status = 0
        except BaseException:
            pass
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _own_mounts(libc: ctypes.CDLL, *, hide_processes: bool) -> None:
    """A mount namespace of our own whose mounts are slaves of the host's (so nothing mounted
    here reaches the host, a new /proc included), with a /proc that shows a process only to its
    own user if asked. Root (the forker, the launcher) still sees every process.

    :raises OSError: the kernel refused.
    """
    _checked("unshare", libc.unshare(CLONE_NEWNS))
    _checked("mount /", libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None))
    if hide_processes:
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        proc = libc.mount(b"proc", b"/proc", b"proc", flags, HIDEPID.encode())
        _checked(f"mount /proc ({HIDEPID})", proc)


def _checked(what: str, result: int) -> None:
    """A libc call's result: OSError with errno when it failed."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_tmp_available() -> bool:
    """Whether runs can get a private tmpfs (``tmp_mb``): mounting needs CAP_SYS_ADMIN."""
    return _has_capability(CAP_SYS_ADMIN)


def _tops(paths: tuple[str, ...], roots: tuple[str, ...]) -> set[str]:
    """The top-level folders of ``roots`` (or a root itself) that hold any of ``paths``."""
    found: set[str] = set()
    for path in paths:
        real = _real_folder(path)
        for root in roots:
            if real == root:
                found.add(root)
            elif real.startswith(root + "/"):
                found.add(root + "/" + real[len(root) + 1 :].split("/", 1)[0])
    return found


def _real_folder(path: str) -> str:
    """The folder ``path`` really is (or, not a folder, is in), symlinks resolved: what the
    kernel says of an O_PATH descriptor of it, a quarter of ``os.path.realpath``'s cost (one
    lstat per component, in Python), which the launcher pays per run."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        real = os.path.realpath(path)  # missing: resolved as far as it goes
        return real if os.path.isdir(real) else os.path.dirname(real)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:  # no /proc
        real = os.path.realpath(path)
        is_dir = os.path.isdir(real)
    finally:
        os.close(fd)
    return real if is_dir else os.path.dirname(real)  # an interpreter, a zip on sys.path


def _has_capability(cap: int) -> bool:
    """Whether this process holds ``cap``: CAP_SETPCAP, which emptying the bounding set needs,
    or CAP_SYS_ADMIN, which mounting needs (root does, unless a container took it away)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _scrub_initial_environment() -> None:
    """Zero the environment strings the kernel placed at exec (the /proc/PID/environ block).

    os.environ.clear() only unlinks them; the block would still show the supervisor's
    environment, secrets included, through /proc/<launcher>/environ and, in fork mode, through
    the script's own /proc/self/environ. Nothing points into it once the variables are unset.
    Best effort: without /proc (or with an unexpected stat line) there is nothing to read it.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: stat fields 50, 51
    except (OSError, IndexError, ValueError):
        return
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)


_DFL = int(signal.SIG_DFL)
_LAUNCHER_SIGNUMS = tuple(int(sig) for sig in LAUNCHER_SIGNALS)
_SIGINT = int(signal.SIGINT)
_EXEC_SIGNUMS = (_SIGINT, int(signal.SIGPIPE), int(signal.SIGXFSZ))


def _undo_launcher_signals() -> None:
    """Put back what the launcher changed; ignored dispositions would even survive exec.

    Through ``_signal``, the C module under ``signal``, with plain ints: the ``signal`` module's
    wrappers convert to and from enum members, whose machinery costs a freshly forked child
    ~75 more copy-on-write faults for these few calls.
    """
    _signal.set_wakeup_fd(-1)  # else a signal would write into whatever file reuses that fd
    for sig in _LAUNCHER_SIGNUMS:
        _signal.signal(sig, _DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def _python_signals(*, fork_mode: bool) -> None:
    """SIGINT, SIGPIPE, SIGXFSZ as a fresh interpreter has them (exec: as it will set them)."""
    if fork_mode:
        # Python itself ignores SIGPIPE and SIGXFSZ at start-up; leaving them ignored keeps a
        # fork-mode script's BrokenPipeError/EFBIG behaviour identical to a fresh interpreter's.
        _signal.signal(_SIGINT, signal.default_int_handler)
    else:
        for sig in _EXEC_SIGNUMS:
            _signal.signal(sig, _DFL)


def _take_descriptors(fds: tuple[int, ...]) -> None:
    """Move a child's descriptors to 0-5 and close every other one. The forker keeps 0-5
    occupied, so the sources are all >= 6 and never clobbered."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(RUN_FD + 1, _MAX_FD)
    os.set_blocking(1, True)  # the pipes are created non-blocking for the launcher's end
    os.set_blocking(2, True)


def _read_order() -> Order:
    size = os.fstat(RUN_FD).st_size
    chunks: list[bytes] = []
    while size > 0 and (chunk := os.read(RUN_FD, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return Order(*marshal.loads(b"".join(chunks)))


def file_id(st: os.stat_result) -> FileId:
    """Which file, in which state: equal ids mean the same inode, not written to since."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_own_script(run: Order) -> tuple[bytes, bytes]:
    """The script's source and marshalled code (b"": compile it), opened as the run's user.

    Not read before the switch: the file may be a symlink to one only root may read (a key, a
    password file), whose lines a SyntaxError's traceback would show in ``stderr_tail``. The
    launcher's copy, read as root, is used only if this is still the very file it read.
    Whatever this reads is read under the run's limits.
    """
    fd = os.open(run.script, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if run.code and file_id(os.fstat(fd)) == run.file_id:
            return run.source, run.code
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), b""
    finally:
        os.close(fd)


def _read_stored(run: Order) -> tuple[bytes, bytes, Modules]:
    """Stored code's script (read here only if the launcher could not), its marshalled code
    and its bundle's modules, from the supervisor's private copy (before the switch)."""
    if run.code:
        source = run.source
    else:
        with open(run.script, "rb") as f:
            source = f.read()
    folder = os.path.dirname(run.script)
    modules: Modules = {}
    for rel in run.modules:
        path = os.path.join(folder, rel)
        with open(path, "rb") as f:
            name, package = module_name(rel)
            modules[name] = (path, f.read(), package)
    return source, run.code, modules


def _pass_code(source: bytes, path: str, modules: Modules, code: bytes) -> None:
    """Leave the compiled script (``code`` if the launcher compiled it), its source and the
    bundle's modules in the run memfd (fd 5) for the exec-mode bootstrap."""
    os.ftruncate(RUN_FD, 0)
    if not code:
        try:
            code = marshal.dumps(compile(source, path, "exec", dont_inherit=True))
        except (SyntaxError, ValueError):
            code = b""  # the bootstrap compiles it again and reports the error as Python would
    _write_all(RUN_FD, marshal.dumps((code, source, modules)))


def _write_all(fd: int, data: bytes) -> None:
    """Write a whole buffer at offset 0 of a regular file (a memfd) without moving its offset."""
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(fd, view[written:], written)


def _sha256(data: bytes) -> str:
    """Imported here, not at the top: the launcher imports hashlib after its forker forked (its
    first compile), so it adds nothing to the image every run is forked from; a child imports
    it only to check a script the launcher had not read (a big one, or one changed since)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def split_code_note(note: bytes) -> tuple[str | None, bytes]:
    """A child's notes: the SHA256 of a script it ran other than the supervisor read (None:
    the one sent), and the rest (a setup failure's note, which may follow)."""
    if note[:1] != NOTE_CODE:
        return None, note
    return note[1:65].decode("ascii", "replace"), note[65:]


def _note(fd: int, kind: bytes, text: str = "") -> None:
    """Tell the launcher something it cannot see from the exit status; never raises."""
    with contextlib.suppress(OSError):
        os.write(fd, kind + text.encode("utf-8", "replace")[:4000])
