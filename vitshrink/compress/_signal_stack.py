"""Keep the calling thread's signal stack across calls into runtimes that replace it.

OpenVINO's CPU plugin points the calling thread's alternate signal stack (`sigaltstack`) at a small
stack of its own when it compiles a model, and puts the previous one back only when the plugin is
destroyed, which a garbage collection may do on another thread. The first thread is then left with
a signal stack in unmapped memory, and the next signal delivered to it on that stack (a SIGCHLD
handler, faulthandler's) makes the kernel kill the process with SIGSEGV (`si_code` SI_KERNEL, no
traceback: faulthandler's handler cannot run either). The full test suite died that way in
`subprocess.wait`, minutes after the OpenVINO tests. `keeps_signal_stack` restores the thread's own
signal stack after such a call (Linux; elsewhere it does nothing).

Example:
    >>> with keeps_signal_stack():
    ...     pass
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Iterator


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def signal_stack() -> tuple[int, int, int] | None:
    """(address, flags, size) of this thread's alternate signal stack, None where it cannot be read."""
    if _LIBC is None:
        return None
    current = _Stack()
    if _LIBC.sigaltstack(None, ctypes.byref(current)) != 0:
        return None
    return (current.ss_sp or 0, current.ss_flags, current.ss_size)


@contextlib.contextmanager
def keeps_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread back the signal stack it had before (see the module)."""
    if _LIBC is None:
        yield
        return
    before = _Stack()
    readable = _LIBC.sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if readable and signal_stack() != (before.ss_sp or 0, before.ss_flags, before.ss_size):
            restore = _Stack(before.ss_sp, before.ss_flags & ~1, before.ss_size)  # SS_ONSTACK is not settable
            _LIBC.sigaltstack(ctypes.byref(restore), None)
