"""Process trees read from /proc, and signals that cannot hit a recycled pid.

Used where no cgroup holds a worker (and for what a partial cgroup cannot count): the
budget monitor finds a worker's descendants, sums their CPU time, resident memory and
tasks, and stops the whole tree. The kernel offers no cheaper way to list a process's
children on every kernel (/proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN), so
one scan reads /proc/<pid>/stat of every process: about 4 µs a process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the monitor needs (see proc(5))."""

    pid: int
    state: str
    ppid: int
    session: int
    cpu_ticks: int  # utime + stime of the live process
    reaped_children_ticks: int  # cutime + cstime: children it has waited for
    threads: int
    starttime: int  # clock ticks after boot: with the pid, names one process forever
    rss_pages: int

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Parse the text of /proc/<pid>/stat; None if it is cut short."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    end = data.rfind(b")")
    fields = data[end + 2 :].split()
    if end < 0 or len(fields) < 22:
        return None
    return ProcStat(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        session=int(fields[3]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        reaped_children_ticks=int(fields[13]) + int(fields[14]),
        threads=int(fields[17]),
        starttime=int(fields[19]),
        rss_pages=int(fields[21]),
    )


class _HeldGilReads:
    """open/read/pread/close of small kernel files without releasing the GIL.

    Every os.read() releases the GIL and must take it back. When another thread of the
    process is CPU-bound (the agent's event loop), taking it back waits for that thread's
    switch interval, 5 ms: a round of a few hundred reads would then last seconds. Reads
    of /proc and cgroup files never block, so the monitor makes them through libc with the
    GIL held (ctypes.PyDLL): about 3.6 µs for open, read and close against 2.7 µs with os.
    """

    CHUNK = 4096

    def __init__(self) -> None:
        libc = ctypes.PyDLL(None, use_errno=True)
        # Without argtypes (ints and bytes convert as they are); every return fits a C int.
        self._open, self._read, self._pread, self._close = (
            libc.open,
            libc.read,
            libc.pread,
            libc.close,
        )
        self._local = threading.local()

    def _buffer(self) -> ctypes.Array[ctypes.c_char]:
        buffer: ctypes.Array[ctypes.c_char] | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = ctypes.create_string_buffer(self.CHUNK)
        return buffer

    @staticmethod
    def _failed(path: str = "") -> OSError:
        errno = ctypes.get_errno()
        return OSError(errno, os.strerror(errno), path)

    def open(self, path: str) -> int:
        fd = int(self._open(path.encode(), os.O_RDONLY | os.O_CLOEXEC))
        if fd < 0:
            raise self._failed(path)
        return fd

    def pread(self, fd: int) -> bytes:
        """The start of the file behind `fd` (re-read from offset 0)."""
        buffer = self._buffer()
        got = int(self._pread(fd, buffer, self.CHUNK, ctypes.c_long(0)))
        if got < 0:
            raise self._failed()
        return ctypes.string_at(buffer, got)

    def close(self, fd: int) -> None:
        self._close(fd)

    def read(self, path: str) -> bytes:
        """A whole small file, through a new fd."""
        fd = self.open(path)
        try:
            buffer = self._buffer()
            parts: list[bytes] = []
            while True:
                got = int(self._read(fd, buffer, self.CHUNK))
                if got < 0:
                    raise self._failed(path)
                if got == 0:
                    return b"".join(parts)
                parts.append(ctypes.string_at(buffer, got))
        finally:
            self._close(fd)


held_gil = _HeldGilReads()


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The stat of `pid`, or None if there is no such process (any more)."""
    try:
        return parse_stat(pid, held_gil.read(f"{proc}/{pid}/stat"))
    except OSError:
        return None


def scan(proc: Path = PROC) -> dict[int, ProcStat]:
    """The stat of every process on the machine (thread group leaders, as /proc lists)."""
    table: dict[int, ProcStat] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        stat = read_stat(int(name), proc)
        if stat is not None:
            table[stat.pid] = stat
    return table


def children_map(table: dict[int, ProcStat]) -> dict[int, list[int]]:
    """ppid -> pids, for walking trees down."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    return children


def members(
    table: dict[int, ProcStat],
    children: dict[int, list[int]],
    roots: Iterable[tuple[int, int]],
    session: int | None = None,
) -> dict[int, ProcStat]:
    """The processes of `table` that belong to a tree: the `roots` (pid, starttime) still
    alive as the same process, everything below them, and, when `session` is given, every
    process of that session (which catches orphans re-parented to init before a scan saw
    them) and everything below those."""
    found: dict[int, ProcStat] = {}
    stack = []
    for pid, starttime in roots:
        stat = table.get(pid)
        if stat is not None and stat.starttime == starttime:
            stack.append(stat)
    if session is not None:
        stack.extend(s for s in table.values() if s.session == session)
    while stack:
        stat = stack.pop()
        if stat.pid in found:
            continue
        found[stat.pid] = stat
        stack.extend(table[c] for c in children.get(stat.pid, ()) if c not in found)
    return found


def signal_exact(pid: int, starttime: int, sig: int, proc: Path = PROC) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `starttime`.

    A pidfd pins the process before the check, so a pid recycled between the scan and the
    signal (another tenant's worker, say) is never hit. False if the process is gone.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        return _signal_by_pid(pid, starttime, sig, proc)
    try:
        stat = read_stat(pid, proc)
        if stat is None or stat.starttime != starttime:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _signal_by_pid(pid: int, starttime: int, sig: int, proc: Path) -> bool:
    # Kernels before 5.3 have no pidfds: the check and the signal leave a window of a few
    # microseconds in which the pid could be recycled.
    stat = read_stat(pid, proc)
    if stat is None or stat.starttime != starttime:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_and_kill_tree(
    root: tuple[int, int],
    session: int | None,
    known: dict[int, ProcStat],
    timeout: float = 5.0,
    proc: Path = PROC,
) -> list[int]:
    """SIGKILL a process tree so that no fork escapes; the pids still alive at `timeout`.

    Without a cgroup nothing freezes a tree at once, so: SIGSTOP every member, re-scanning
    until a scan finds no new one (a stopped process cannot fork, and a fork that races the
    SIGSTOP is restarted by the kernel because a signal is pending); then SIGKILL the
    descendants, then the root; then re-scan for late members until none is left alive.
    Zombies count as dead: their parent (the agent, or init) reaps them.
    """
    root_pid, root_start = root
    deadline = time.monotonic() + timeout
    stopped: dict[int, int] = {}
    roots = {(root_pid, root_start), *((s.pid, s.starttime) for s in known.values())}
    while True:
        table = scan(proc)
        tree = members(table, children_map(table), roots, session)
        fresh = [s for s in tree.values() if s.pid not in stopped and not s.zombie]
        for stat in fresh:
            signal_exact(stat.pid, stat.starttime, signal.SIGSTOP, proc)
            stopped[stat.pid] = stat.starttime
        roots.update((s.pid, s.starttime) for s in tree.values())
        if not fresh or time.monotonic() > deadline:
            break
    while True:
        for pid, starttime in stopped.items():
            if pid != root_pid:
                signal_exact(pid, starttime, signal.SIGKILL, proc)
        signal_exact(root_pid, root_start, signal.SIGKILL, proc)
        table = scan(proc)
        tree = members(table, children_map(table), roots, session)
        alive = {s.pid: s.starttime for s in tree.values() if not s.zombie}
        if not alive:
            return []
        if time.monotonic() > deadline:
            return sorted(alive)
        stopped.update(alive)
        roots.update(alive.items())
        time.sleep(0.001)
