"""No user namespaces for runs: a seccomp filter the forker installs once, inherited by all.

A user namespace gives an unprivileged process every capability over the namespaces it makes
next: a run could mount a tmpfs of its own (half the host's memory by default: ``tmp_mb`` and
``memory_mb`` count neither its pages nor itself), and reach kernel code that only root
reaches otherwise. So ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` fail with EPERM, and
``clone3``, whose flags a filter cannot read, with ENOSYS (the C library falls back to
``clone``), as in Docker's default profile. Everything else is allowed. On x86-64 the i386 entry
points get the same rules, and the x32 ones are refused outright.

The filter needs ``PR_SET_NO_NEW_PRIVS`` (:meth:`workers.sandbox.Sandbox.harden` sets it) and
stays for every process below, exec included. An architecture not listed here gets no filter.
"""

import ctypes
import errno
import os

CLONE_NEWUSER = 0x10000000
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
X32_BIT = 0x40000000

# (audit arch, clone3, unshare, clone): the native ABI first, then a compat one.
_ARCHES = {
    "x86_64": ((0xC000003E, 435, 272, 56), (0x40000003, 435, 310, 120)),  # x86-64, i386
    "aarch64": ((0xC00000B7, 435, 97, 220), (0x40000028, 435, 337, 120)),  # arm64, arm
}

# classic BPF: ld [k]; jeq k; jge k; jset k; ret k
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ARCH, _NR, _ARG0 = 4, 0, 16  # offsets in struct seccomp_data (args[0]'s low half)


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Instruction))]


Step = tuple[int, str | int, str | int, int]  # code, jump if true, if false (labels), k


def program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The filter for ``machine`` (``os.uname().machine``), as ``(code, jt, jf, k)``; None
    where we do not know its system call numbers."""
    arches = _ARCHES.get(machine)
    if arches is None:
        return None
    steps: list[Step | str] = []
    for index, (arch, clone3, unshare, clone) in enumerate(arches):
        steps += [
            f"arch{index}",
            (_LD, 0, 0, _ARCH),
            (_JEQ, 0, f"arch{index + 1}", arch),
            (_LD, 0, 0, _NR),
        ]
        if machine == "x86_64" and index == 0:
            steps.append((_JGE, "deny", 0, X32_BIT))
        steps += [
            (_JEQ, "nosys", 0, clone3),
            (_JEQ, "flags", 0, unshare),
            (_JEQ, "flags", 0, clone),
            (_RET, 0, 0, RET_ALLOW),
        ]
    steps += [
        f"arch{len(arches)}",  # another architecture: not ours to judge
        (_RET, 0, 0, RET_ALLOW),
        "flags",
        (_LD, 0, 0, _ARG0),
        (_JSET, "deny", 0, CLONE_NEWUSER),
        (_RET, 0, 0, RET_ALLOW),
        "deny",
        (_RET, 0, 0, RET_ERRNO | errno.EPERM),
        "nosys",
        (_RET, 0, 0, RET_ERRNO | errno.ENOSYS),
    ]
    return _assemble(steps)


def _assemble(steps: list[Step | str]) -> list[tuple[int, int, int, int]]:
    """Labels to relative jumps (counted from the next instruction)."""
    labels: dict[str, int] = {}
    code: list[Step] = []
    for step in steps:
        if isinstance(step, str):
            labels[step] = len(code)
        else:
            code.append(step)

    def offset(target: str | int, at: int) -> int:
        return target if isinstance(target, int) else labels[target] - at - 1

    return [(op, offset(jt, i), offset(jf, i), k) for i, (op, jt, jf, k) in enumerate(code)]


def deny_user_namespaces() -> bool:
    """Install the filter on this process (and so on all it forks or execs); False where this
    machine has none. :raises OSError: the kernel refused it (no ``no_new_privs``, no seccomp)."""
    found = program(os.uname().machine)
    if found is None:
        return False
    instructions = (_Instruction * len(found))(*(_Instruction(*step) for step in found))
    prog = _Program(len(found), instructions)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
    return True
