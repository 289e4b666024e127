"""Scheduling the snippet with ptrace directly, on x86-64 Linux: the same two calls as the gdb
script (`mmap` a page, `Py_AddPendingCall(PyRun_SimpleString, text)`), made by this module.

Why not gdb everywhere: gdb before 14 restores a thread's extended registers after a call with
a buffer sized from the features it knows, and the kernel refuses any size but its own
(`PTRACE_SETREGSET` answers EFAULT, gdb prints "Couldn't write extended state status: Bad
address"). On a CPU with AMX (its tile data makes the kernel's XSAVE area 11 kB) every call
gdb 13 makes fails that way. Here the buffer is the one the kernel filled, handed back as it is.

It also stops less: only the main thread, from `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (no
SIGSTOP, so no other thread stops with it) to the detach: 0.3 ms here, up to 3 ms on a busy
host (gdb's run held the whole process for 40-50 ms by address). The other threads run on;
both calls are safe beside them (`mmap` is a system call, `Py_AddPendingCall` takes its own
lock).

A call, the way a debugger makes one: save the thread's registers, point `rip` at the function
with its arguments in `rdi`/`rsi`/..., below the red zone push a return address of 0, and let
the thread run until it returns there (a SIGSEGV stop at address 0, never delivered); read
`rax`, put every register back. `orig_rax` is set to -1 for the call so that a system call the
thread was stopped in is not restarted into the function, and restored after so that it is.

Run as `python -m apiscope.inject.ptrace PID MMAP ADD_PENDING_CALL RUN_SIMPLE_STRING TEXT_FILE`
with the runner's deadline: it prints the gdb script's marks (`APISCOPE: attached`,
`APISCOPE: pending N`, `ptrace: Operation not permitted`...) so that one parser reads both.
SIGINT (the deadline) interrupts a call that hangs and restores the thread before detaching.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import sys
import time

from apiscope.inject.gdb import (
    ATTACH_RETRY_INTERVAL,
    ATTACH_RETRY_SECONDS,
    MAP_PRIVATE_ANONYMOUS,
    MARK,
    PAGE,
    PROT_READ_WRITE,
)

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
NT_X86_XSTATE = 0x202
WALL = 0x40000000  # __WALL: wait for a thread that is not the thread group's leader too

XSTATE_BUFFER = 64 * 1024  # the kernel fills what it has (about 11 kB with AMX) and says how much
FPREGS_SIZE = 512
CALL_SECONDS = 2.0  # a call that has not returned by then is abandoned (a lock never freed?)
RED_ZONE = 128
STACK_SLACK = 512


class UserRegs(ctypes.Structure):
    """`struct user_regs_struct` of x86-64 Linux."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class PtraceError(Exception):
    def __init__(self, request: str, err: int) -> None:
        super().__init__(f"ptrace {request}: {os.strerror(err)}")
        self.errno = err


class CallFailed(Exception):
    """The thread did not come back from a call the way it should have."""


def supported() -> bool:
    """Calls are made this way on x86-64 Linux; elsewhere gdb makes them."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


def _call_ptrace(request: int, name: str, tid: int, addr: int | None = None,
                 data: object = None) -> None:
    ctypes.set_errno(0)
    if _ptrace(request, tid, addr, data) == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(name, err)


class Thread:
    """One thread of the target, seized and stopped, whose registers come back as they were."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.pending_signal = 0  # a signal that stopped the thread meanwhile, delivered at detach
        self.regs = UserRegs()
        self.extended: ctypes.Array[ctypes.c_char] | None = None
        self.extended_size = 0
        self.fpregs: ctypes.Array[ctypes.c_char] | None = None
        self.memory: int | None = None  # /proc/TID/mem, open while the thread is held

    def seize(self, interrupted: list[bool]) -> None:
        """Trace and stop the thread, retrying while another tracer (py-spy) holds it."""
        deadline = time.monotonic() + ATTACH_RETRY_SECONDS
        while True:
            try:
                _call_ptrace(PTRACE_SEIZE, "seize", self.tid, 0, None)
                break
            except PtraceError as exc:
                if exc.errno != errno.EPERM or time.monotonic() > deadline or interrupted[0]:
                    raise
                time.sleep(ATTACH_RETRY_INTERVAL)
        _call_ptrace(PTRACE_INTERRUPT, "interrupt", self.tid)
        status = self.wait(None, interrupted)
        if status is None:
            raise CallFailed("the thread did not stop")
        self._note_signal(status)
        self.memory = os.open(f"/proc/{self.tid}/mem", os.O_RDWR)

    def write(self, address: int, data: bytes) -> None:
        """Write `data` into the process's memory at `address` (the thread must be held)."""
        assert self.memory is not None
        if os.pwrite(self.memory, data, address) != len(data):
            raise OSError(errno.EIO, "short write to the target's memory")

    def save(self) -> None:
        _call_ptrace(PTRACE_GETREGS, "getregs", self.tid, 0, ctypes.byref(self.regs))
        buffer = ctypes.create_string_buffer(XSTATE_BUFFER)
        iov = IoVec(ctypes.cast(buffer, ctypes.c_void_p), XSTATE_BUFFER)
        try:
            _call_ptrace(PTRACE_GETREGSET, "getregset", self.tid, NT_X86_XSTATE,
                         ctypes.byref(iov))
            self.extended, self.extended_size = buffer, iov.iov_len
        except PtraceError:  # a CPU without XSAVE: the legacy FPU/SSE area is all there is
            self.fpregs = ctypes.create_string_buffer(FPREGS_SIZE)
            _call_ptrace(PTRACE_GETFPREGS, "getfpregs", self.tid, 0, self.fpregs)

    def restore(self) -> None:
        _call_ptrace(PTRACE_SETREGS, "setregs", self.tid, 0, ctypes.byref(self.regs))
        if self.extended is not None:
            iov = IoVec(ctypes.cast(self.extended, ctypes.c_void_p), self.extended_size)
            _call_ptrace(PTRACE_SETREGSET, "setregset", self.tid, NT_X86_XSTATE,
                         ctypes.byref(iov))
        elif self.fpregs is not None:
            _call_ptrace(PTRACE_SETFPREGS, "setfpregs", self.tid, 0, self.fpregs)

    def detach(self) -> None:
        if self.memory is not None:
            os.close(self.memory)
            self.memory = None
        _call_ptrace(PTRACE_DETACH, "detach", self.tid, 0, self.pending_signal)

    def call(self, function: int, args: tuple[int, ...], interrupted: list[bool]) -> int:
        """Run `function(*args)` (at most six integer arguments) on the thread; its `rax`."""
        regs = UserRegs.from_buffer_copy(self.regs)
        for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        sp = (self.regs.rsp - RED_ZONE - STACK_SLACK) & ~0xF
        sp -= 8  # the return address: as if `call` had pushed it, so sp + 8 is 16-aligned
        self.write(sp, b"\0" * 8)
        regs.rsp, regs.rip, regs.rax = sp, function, 0
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # no system call restart into the function
        _call_ptrace(PTRACE_SETREGS, "setregs", self.tid, 0, ctypes.byref(regs))
        deadline = time.monotonic() + CALL_SECONDS
        _call_ptrace(PTRACE_CONT, "cont", self.tid, 0, 0)
        while True:
            status = self.wait(deadline, interrupted)
            if status is None:  # hung (a lock the thread holds?) or interrupted: stop it there
                _call_ptrace(PTRACE_INTERRUPT, "interrupt", self.tid)
                if self.wait(time.monotonic() + 1.0, [False]) is None:
                    raise CallFailed("the thread did not stop after its call was abandoned")
                raise CallFailed("the call did not return in time")
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise CallFailed("the thread ended during the call")
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGSEGV and status >> 16 == 0:
                out = UserRegs()
                _call_ptrace(PTRACE_GETREGS, "getregs", self.tid, 0, ctypes.byref(out))
                if out.rip == 0:
                    return int(out.rax)
                raise CallFailed(f"the call faulted at {out.rip:#x}")
            self._note_signal(status)
            _call_ptrace(PTRACE_CONT, "cont", self.tid, 0, 0)

    def wait(self, deadline: float | None, interrupted: list[bool]) -> int | None:
        """The thread's next stop (its wait status), or None at the deadline or on SIGINT."""
        pause = 0.0001
        while True:
            try:
                tid, status = os.waitpid(self.tid, os.WNOHANG | WALL)
            except ChildProcessError:
                raise CallFailed("the thread is gone") from None
            if tid == self.tid:
                return status
            if interrupted[0] or (deadline is not None and time.monotonic() > deadline):
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _note_signal(self, status: int) -> None:
        """A signal-delivery stop (not our interrupt) is kept for the detach."""
        if os.WIFSTOPPED(status) and status >> 16 == 0:
            sig = os.WSTOPSIG(status)
            if sig not in (signal.SIGSTOP, signal.SIGTRAP) and not self.pending_signal:
                self.pending_signal = sig


def schedule(pid: int, mmap: int, add_pending_call: int, run_simple_string: int,
             text: bytes, interrupted: list[bool]) -> int:
    """Map a page in `pid`, write `text` (NUL-terminated) there and add the pending call;
    `Py_AddPendingCall`'s result. Prints the marks the gdb script prints."""
    thread = Thread(pid)
    thread.seize(interrupted)
    stopped = time.perf_counter()
    print(f"{MARK} attached", flush=True)
    try:
        thread.save()
        try:
            size = (len(text) + PAGE - 1) // PAGE * PAGE
            page = thread.call(mmap, (0, size, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS,
                                      0xFFFFFFFFFFFFFFFF, 0), interrupted)
            if page == 0xFFFFFFFFFFFFFFFF:
                print(f"{MARK} mmap failed", flush=True)
                return -1
            thread.write(page, text)
            result = thread.call(add_pending_call, (run_simple_string, page), interrupted)
            pending = ctypes.c_int32(result & 0xFFFFFFFF).value
            print(f"{MARK} pending {pending}", flush=True)
            return pending
        finally:
            thread.restore()
    finally:
        thread.detach()
        print(f"{MARK} held {(time.perf_counter() - stopped) * 1000:.3f} ms", flush=True)


def main(argv: list[str]) -> int:
    interrupted = [False]

    def interrupt(signum: int, frame: object) -> None:
        interrupted[0] = True

    signal.signal(signal.SIGINT, interrupt)
    pid = int(argv[0])
    mmap, add_pending_call, run_simple_string = (int(a, 0) for a in argv[1:4])
    with open(argv[4], "rb") as source:
        text = source.read() + b"\0"
    try:
        schedule(pid, mmap, add_pending_call, run_simple_string, text, interrupted)
    except PtraceError as exc:
        if exc.errno == errno.ESRCH:
            print("ptrace: No such process.", flush=True)
        elif exc.errno == errno.EPERM:
            print("ptrace: Operation not permitted.", flush=True)
        else:
            print(f"{MARK} {exc}", flush=True)
        return 1
    except (CallFailed, OSError) as exc:
        print(f"{MARK} {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
