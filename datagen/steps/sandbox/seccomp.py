"""A seccomp filter for the sandbox (bwrap --seccomp FD): no new namespaces, no mounts.

Without it, a candidate could create a user namespace of its own inside the sandbox (most
kernels allow unprivileged ones), become root there and mount a tmpfs of any size: a way around
the disk quota wherever no cgroup bounds its memory. `program()` returns the classic-BPF program
(struct sock_filter[], as bwrap reads it) that makes these calls fail with EPERM:

    unshare, setns, mount, umount2, pivot_root, the new mount API (open_tree, move_mount, fsopen,
    fsconfig, fsmount, fspick, mount_setattr), clone with any CLONE_NEW* flag, keyctl, add_key,
    request_key (the kernel keyring is not namespaced), bpf, perf_event_open, userfaultfd;

clone3 fails with ENOSYS, so the C library falls back to clone, whose flags the filter can
read (clone3 passes them in memory it cannot). Every call of another ABI than the native one
(i386 or x32 on x86-64, arm32 on arm64) fails with EPERM, since its numbers differ. Raises
OSError on an architecture it has no table for (then the sandbox does not run: fail closed).
Numbers: the kernel's arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
"""

from __future__ import annotations

import platform
import struct

_ARCHES = {
    # machine: (AUDIT_ARCH_*, {name: number})
    "x86_64": (0xC000003E, {
        "clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    }),
    "aarch64": (0xC00000B7, {
        "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
    }),
}  # fmt: skip
_COMMON = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}
_CLONE3 = 435
_X32_BIT = 0x40000000
CLONE_NEW_FLAGS = 0x7E020080  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38


def program(machine: str | None = None) -> bytes:
    """The filter for `machine` (platform.machine() by default), as bytes of struct sock_filter."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no seccomp table for the {machine} architecture")
    audit_arch, numbers = _ARCHES[machine]
    denied = sorted({number for name, number in numbers.items() if name != "clone"} | set(_COMMON.values()))
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets.
    code: list[tuple[int, str | None, str | None, int]] = [
        (_LD_W_ABS, None, None, 4),  # seccomp_data.arch
        (_JEQ, None, "deny", audit_arch),
        (_LD_W_ABS, None, None, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        code.append((_JGE, "deny", None, _X32_BIT))
    code += [(_JEQ, "deny", None, number) for number in denied]
    code += [
        (_JEQ, "enosys", None, _CLONE3),
        (_JEQ, None, "allow", numbers["clone"]),
        (_LD_W_ABS, None, None, 16),  # the low half of args[0]: clone's flags on both ABIs
        (_JSET, "deny", "allow", CLONE_NEW_FLAGS),
    ]
    labels = {"allow": len(code), "deny": len(code) + 1, "enosys": len(code) + 2}
    code += [(_RET, None, None, _ALLOW), (_RET, None, None, _ERRNO | _EPERM), (_RET, None, None, _ERRNO | _ENOSYS)]

    def offset(index: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - index - 1

    return b"".join(struct.pack("=HBBI", op, offset(i, jt), offset(i, jf), k) for i, (op, jt, jf, k) in enumerate(code))
