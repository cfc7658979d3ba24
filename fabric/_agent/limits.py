"""Kernel limits for workers: cgroups where the machine lets the agent write them. They are
the backstop behind the budget monitor (monitor.py); rlimits.py adds the per-process rlimits
every machine has.

`detect_kernel_limits` (in cgroup_setup.py) finds what the machine offers (cgroup v2,
cgroup v1, or nothing writable) and proves it. The `KernelLimits` it returns says in
`describe()` which mechanism is in force and why, makes one `WorkerGroup` per worker with
`create_group`, and removes everything on `close`.

Layout: ``<agent's own cgroup>/fabric-<agent>/<group>`` in every hierarchy used (one in
v2; one per controller mount in v1). The agent's own cgroup is the one /proc/self/cgroup
names, so workers stay inside whatever confines the agent itself. An agent holds an flock
on its parent group for its lifetime; at startup a sibling ``fabric-*`` whose lock is free
belonged to a dead agent: its groups are killed and removed. Startup holds an flock on
the own cgroup, so no agent can see another's parent between its mkdir and its flock.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fabric._agent import procfs
from fabric._agent.budget_errors import (
    BudgetError,
    CgroupUnavailableError,
    CgroupWriteError,
    GroupExistsError,
    GroupNotEmptyError,
    InvalidGroupNameError,
    KillFailedError,
)

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
MOUNTINFO = Path("/proc/self/mountinfo")
SELF_CGROUP = Path("/proc/self/cgroup")
GROUP_PREFIX = "fabric-"
DISABLE_ENV = "FABRIC_NO_CGROUPS"
# What the agent uses of each version, in the order describe() lists them.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
GROUP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
PROBE_MEMORY = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Kernel limits of one worker's group; None leaves a resource unlimited."""

    memory_bytes: int | None = None
    cpus: float | None = None  # CPU bandwidth (cores), not CPU seconds
    pids: int | None = None  # tasks: the kernel counts threads as well as processes


@dataclass(frozen=True)
class Budget:
    """What one worker may use over its life, as the monitor enforces it.

    `pids` counts processes (the worker and its descendants; threads do not count), as a
    policy's ``processes`` does. The kernel's pids controller counts tasks, threads
    included, so `kernel_limits` leaves room for threads.
    """

    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    wall_seconds: float | None = None

    def kernel_limits(
        self, cpus: float | None = None, threads_per_process: int | None = None
    ) -> Limits:
        """The group limits that back this budget: memory at the budget itself (the kernel
        refuses the excess, the monitor reports it); tasks at `threads_per_process` per
        allowed process (default: max(16, 2 per CPU + 8), room for a Python worker's own
        threads and a BLAS pool), a ceiling for fork and thread bombs between two samples;
        CPU bandwidth as given."""
        tasks = None
        if self.pids is not None:
            per_process = threads_per_process or max(16, 2 * (os.cpu_count() or 1) + 8)
            tasks = self.pids * per_process
        return Limits(memory_bytes=self.memory_bytes, cpus=cpus, pids=tasks)


@dataclass(frozen=True)
class Usage:
    """What a worker's process tree uses or has used."""

    cpu_seconds: float  # user + system, accumulated since the worker joined its group
    memory_bytes: int  # cgroup: charged memory (incl. page cache, shm); procfs: sum of RSS
    pids: int  # tasks, threads included (what the kernel's pids controller counts)
    processes: int  # live processes (what `Budget.pids` bounds)


@dataclass(frozen=True)
class KernelEvents:
    """Counters of the kernel enforcing a group's limits."""

    oom_kills: int = 0  # processes the kernel killed at the memory limit
    refused_forks: int = 0  # forks or clones the kernel refused at the pids limit
    memory_peak: int = 0  # highest memory charge seen, 0 where the kernel does not say


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and the agent's own cgroup in it."""

    mount: Path
    controllers: frozenset[str]  # v1: bound to this mount; v2: usable below `base`
    base: Path


# -- small file helpers ----------------------------------------------------------------


def write_control(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupWriteError(path, "open", e) from e
    try:
        os.write(fd, text.encode())
    except OSError as e:
        raise CgroupWriteError(path, f"write {text!r} to", e) from e
    finally:
        os.close(fd)


def read_control(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _read_fresh(path: str) -> bytes:
    """The whole of a small control file, through a new fd, holding the GIL (see
    procfs.held_gil: the monitor reads these every sample)."""
    return procfs.held_gil.read(path)


def _keyed(text: str, key: str) -> int:
    """The value of `key` in a flat keyed file ("key value" lines); 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _pid_list(text: str) -> list[int]:
    return [int(line) for line in text.split()]


def _rmdir(path: Path, timeout: float = 1.0) -> None:
    # A group whose last task just exited can stay busy for a moment.
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupWriteError(path, "remove", e) from e
            time.sleep(0.005)


# -- worker groups ---------------------------------------------------------------------


class WorkerGroup:
    """One worker's cgroup (one directory per hierarchy in v1).

    Invariant: the worker is added (`add`) before it is sent its first task, so no tenant
    code runs, and nothing forks, outside the group. Pages it touched before `add` stay
    charged where they were (v2 never moves charges; v1 only with a deprecated knob).
    """

    def __init__(
        self,
        name: str,
        version: int,
        dirs: dict[str, Path],
        limits: Limits,
        on_remove: Callable[[WorkerGroup], None] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        # controller -> directory; "" names the directory that lists the members.
        self.dirs = dirs
        self.limits = limits
        self.controllers = frozenset(k for k in dirs if k)
        self._on_remove = on_remove
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self.removed = False
        # The files usage() and events() read, as strings: Path joins cost microseconds
        # apiece, and the monitor reads them every sample.
        members = str(dirs[""]) if "" in dirs else ""
        if version == 2:
            self._cpu_file = f"{members}/cpu.stat"  # there whether or not cpu is enabled
        else:
            self._cpu_file = self._file("cpuacct", "cpuacct.usage", "") or ""
        self._memory_file = self._file("memory", "memory.usage_in_bytes", "memory.current")
        self._tasks_file = self._file("pids", "pids.current", "pids.current")
        self._threads_file = f"{members}/{'cgroup.threads' if version == 2 else 'tasks'}"
        self._procs_file = f"{members}/cgroup.procs"
        self._oom_file = self._file("memory", "memory.oom_control", "memory.events")
        self._peak_file = self._file("memory", "memory.max_usage_in_bytes", "memory.peak")
        self._refused_file = self._file("pids", "pids.events", "pids.events")

    def __repr__(self) -> str:
        return f"WorkerGroup({self.name!r}, v{self.version}, {sorted(self.controllers)})"

    @property
    def paths(self) -> list[Path]:
        """Every directory of the group, once each."""
        return list(dict.fromkeys(self.dirs.values()))

    def holds(self, controller: str) -> bool:
        return controller in self.controllers

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group."""
        for path in self.paths:
            write_control(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """The processes in the group (in any of its hierarchies)."""
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                found.update(_pid_list(_read_fresh(f"{path}/cgroup.procs").decode()))
        return sorted(found)

    def _file(self, controller: str, v1_name: str, v2_name: str) -> str | None:
        if controller not in self.dirs:
            return None
        return str(self.dirs[controller] / (v2_name if self.version == 2 else v1_name))

    def _pread(self, path: str) -> str:
        # Control files are re-read at offset 0 through an fd kept open: the monitor reads
        # a few of them every sample, and an open() costs more than the read. The lock
        # keeps `remove` from closing an fd (whose number could then be reused) mid-read.
        with self._fd_lock:
            if self.removed:
                raise FileNotFoundError(errno.ENOENT, "group removed", path)
            fd = self._fds.get(path)
            if fd is None:
                fd = procfs.held_gil.open(path)
                self._fds[path] = fd
            return procfs.held_gil.pread(fd).decode()

    def usage(self) -> Usage:
        """CPU seconds, memory, tasks and processes of the group, from its control files
        where it has the controller, else from /proc over its members."""
        if self.version == 2:
            cpu = _keyed(self._pread(self._cpu_file), "usage_usec") / 1e6
        elif self._cpu_file:
            cpu = int(self._pread(self._cpu_file)) / 1e9
        else:
            # Lossy: CPU of members that exited and were reaped outside the group is gone.
            cpu = sum(s.cpu_ticks + s.reaped_children_ticks for s in self._stats())
            cpu /= procfs.CLOCK_TICKS
        if self._memory_file:
            memory = int(self._pread(self._memory_file))
        else:
            memory = sum(s.rss_pages for s in self._stats()) * procfs.PAGE_SIZE
        # Pid lists are read through a fresh fd: v1 caches a list per open file, so a
        # re-read at offset 0 of a kept fd can return a stale one.
        if self._tasks_file:
            tasks = int(self._pread(self._tasks_file))
        else:
            tasks = len(_read_fresh(self._threads_file).split())
        processes = len(_read_fresh(self._procs_file).split())
        return Usage(cpu_seconds=cpu, memory_bytes=memory, pids=tasks, processes=processes)

    def _stats(self) -> list[procfs.ProcStat]:
        found = (procfs.read_stat(pid) for pid in self.pids())
        return [s for s in found if s is not None]

    def events(self) -> KernelEvents:
        """How often the kernel enforced the group's memory and pids limits."""
        oom_kills = peak = refused = 0
        if self._oom_file:
            oom_kills = _keyed(self._pread(self._oom_file), "oom_kill")
        if self._peak_file:
            with contextlib.suppress(FileNotFoundError):  # memory.peak: Linux 5.19+
                peak = int(self._pread(self._peak_file))
        if self._refused_file:
            refused = _keyed(self._pread(self._refused_file), "max")
        return KernelEvents(oom_kills=oom_kills, refused_forks=refused, memory_peak=peak)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the group and return once it is empty.

        v2 writes cgroup.kill, which the kernel applies to every task, forks included.
        v1 (and v2 before 5.14) freezes the group, SIGKILLs every pid in cgroup.procs and
        thaws: a frozen task can neither fork nor exit, so the list is complete and no pid
        in it is recycled. Both loop until the group is empty, so a fork bomb cannot
        escape. Without a freezer the pids limit bounds what each round has to kill.
        """
        deadline = time.monotonic() + timeout
        if self.version == 2 and (self.dirs[""] / "cgroup.kill").exists():
            write_control(self.dirs[""] / "cgroup.kill", "1")
            if not self._wait_empty(deadline):
                raise KillFailedError(f"group {self.name!r}", self.pids(), timeout)
            return
        while True:
            if not self.pids():
                return
            with self._frozen(deadline):
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if self._wait_empty(min(deadline, time.monotonic() + 0.05)):
                return
            if time.monotonic() > deadline:
                raise KillFailedError(f"group {self.name!r}", self.pids(), timeout)

    @contextlib.contextmanager
    def _frozen(self, deadline: float) -> Iterator[None]:
        if self.version == 2:
            state, frozen, thawed = self.dirs[""] / "cgroup.freeze", "1", "0"
        elif self.holds("freezer"):
            state, frozen, thawed = self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED"
        else:
            yield
            return
        write_control(state, frozen)
        try:
            # Freezing waits for every task to reach a safe point; a task stuck in
            # uninterruptible sleep can hold it up, so give up waiting after a while and
            # kill anyway (the outer loop catches what forks meanwhile).
            limit = min(deadline, time.monotonic() + 0.2)
            while time.monotonic() < limit and not self._is_frozen():
                time.sleep(0.0005)
            yield
        finally:
            write_control(state, thawed)

    def _is_frozen(self) -> bool:
        if self.version == 2:
            return _keyed(read_control(self.dirs[""] / "cgroup.events"), "frozen") == 1
        return read_control(self.dirs["freezer"] / "freezer.state").strip() == "FROZEN"

    def _wait_empty(self, deadline: float) -> bool:
        """Whether the group emptied before `deadline`."""
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def remove(self) -> None:
        """Remove the (empty) group's directories."""
        if self.removed:
            return
        pids = self.pids()
        if pids:
            raise GroupNotEmptyError(self.name, pids)
        with self._fd_lock:
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)
            for path in self.paths:
                _rmdir(path)
            self.removed = True
        if self._on_remove is not None:
            self._on_remove(self)


# -- detection -------------------------------------------------------------------------


@dataclass
class KernelLimits:
    """What the machine offers for worker budgets, and the per-agent parent group.

    `version` is 2, 1 or None (no writable cgroups); `controllers` are those proven to
    work; `reason` says why something is missing. Close it to kill and remove every group
    it made and the parent group itself.
    """

    agent: str
    version: int | None
    controllers: frozenset[str]
    reason: str
    hierarchies: tuple[Hierarchy, ...] = ()
    _locks: list[int] = field(default_factory=list, repr=False)
    _groups: dict[str, WorkerGroup] = field(default_factory=dict, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def available(self) -> bool:
        return self.version is not None

    @property
    def parents(self) -> list[Path]:
        """The per-agent parent group, one directory per hierarchy."""
        return [h.base / f"{GROUP_PREFIX}{self.agent}" for h in self.hierarchies]

    def describe(self) -> str:
        """One line for the agent's startup log: the mechanism in force and why."""
        if self.version is None:
            return f"budgets: no writable cgroups ({self.reason}); rlimits and the monitor only"
        where = " and ".join(_display_paths(self.parents))
        if self.version == 2:
            kinds = [c for c in V2_CONTROLLERS if c in self.controllers]
            if not kinds:
                return (
                    f"budgets: cgroup v2 for tracking and kill only under {where} "
                    f"({self.reason}); rlimits and the monitor"
                )
            kinds.append("cgroup.kill" if "kill" in self.controllers else "freeze")
        else:
            kinds = [c for c in V1_CONTROLLERS if c in self.controllers]
        text = f"budgets: cgroup v{self.version} ({', '.join(kinds)}) under {where}"
        if self.reason:
            text += f" ({self.reason})"
        return text + "; rlimits and the monitor"

    def create_group(self, name: str, limits: Limits) -> WorkerGroup:
        """A new group `name` below the agent's parent group, with `limits` written."""
        if self.version is None:
            raise CgroupUnavailableError(self.reason)
        if not GROUP_NAME.fullmatch(name):
            raise InvalidGroupNameError(name)
        if name in self._groups:
            raise GroupExistsError(name)
        group = _make_group(self, name, limits)
        self._groups[name] = group
        return group

    def groups(self) -> list[WorkerGroup]:
        return list(self._groups.values())

    def _forget(self, group: WorkerGroup) -> None:
        self._groups.pop(group.name, None)

    def close(self) -> None:
        """Kill and remove every group still open, then the parent group."""
        if self._closed:
            return
        self._closed = True
        try:
            for group in list(self._groups.values()):
                try:
                    group.kill()
                    group.remove()
                except BudgetError as e:
                    log.warning("cannot remove %r: %s", group, e)
            if self.version is not None:
                try:
                    remove_parent(self.version, self.hierarchies, self.agent)
                except BudgetError as e:
                    log.warning("cannot remove %s: %s", self.parents, e)
        finally:
            for fd in self._locks:
                os.close(fd)
            self._locks.clear()

    def __enter__(self) -> KernelLimits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _display_paths(paths: list[Path]) -> list[str]:
    """/sys/fs/cgroup/{cpu,pids}/fabric-a for paths that differ only in the mount."""
    by_rest: dict[str, list[str]] = {}
    shown: list[str] = []
    for path in paths:
        if not path.is_relative_to(CGROUP_MOUNT):
            shown.append(str(path))
            continue
        mount, *below = path.relative_to(CGROUP_MOUNT).parts
        by_rest.setdefault("/".join(below), []).append(mount)
    for rest, mounts in by_rest.items():
        names = mounts[0] if len(mounts) == 1 else "{" + ",".join(mounts) + "}"
        shown.append(f"{CGROUP_MOUNT}/{names}/{rest}")
    return shown


def _make_group(owner: KernelLimits, name: str, limits: Limits) -> WorkerGroup:
    assert owner.version is not None
    dirs: dict[str, Path] = {}
    made: list[Path] = []
    try:
        for h, parent in zip(owner.hierarchies, owner.parents, strict=True):
            path = parent / name
            try:
                path.mkdir()
            except FileExistsError as e:
                raise GroupExistsError(name) from e
            except OSError as e:
                raise CgroupWriteError(path, "create", e) from e
            made.append(path)
            dirs.setdefault("", path)
            for controller in h.controllers & owner.controllers:
                if controller != "kill":
                    dirs[controller] = path
        if owner.version == 2:
            _write_v2_limits(dirs, limits)
        else:
            _write_v1_limits(dirs, limits)
    except BaseException:
        for path in reversed(made):
            with contextlib.suppress(OSError, CgroupWriteError):
                _rmdir(path)
        raise
    return WorkerGroup(name, owner.version, dirs, limits, on_remove=owner._forget)


def _write_v1_limits(dirs: dict[str, Path], limits: Limits) -> None:
    if limits.memory_bytes is not None and "memory" in dirs:
        mem = dirs["memory"]
        write_control(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        # With swap, memory+swap gets the same ceiling, so the budget cannot swap out.
        if (mem / "memory.memsw.limit_in_bytes").exists():
            write_control(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
    if limits.cpus is not None and "cpu" in dirs:
        period = int(read_control(dirs["cpu"] / "cpu.cfs_period_us"))
        quota = max(1000, int(limits.cpus * period))
        write_control(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
    if limits.pids is not None and "pids" in dirs:
        write_control(dirs["pids"] / "pids.max", str(limits.pids))


def _write_v2_limits(dirs: dict[str, Path], limits: Limits) -> None:
    if limits.memory_bytes is not None and "memory" in dirs:
        mem = dirs["memory"]
        write_control(mem / "memory.max", str(limits.memory_bytes))
        if (mem / "memory.swap.max").exists():
            write_control(mem / "memory.swap.max", "0")
        # At the limit the kernel kills the whole group, not just its largest process.
        if (mem / "memory.oom.group").exists():
            write_control(mem / "memory.oom.group", "1")
    if limits.cpus is not None and "cpu" in dirs:
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        write_control(dirs["cpu"] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    if limits.pids is not None and "pids" in dirs:
        write_control(dirs["pids"] / "pids.max", str(limits.pids))


def _existing_group(version: int, hierarchies: tuple[Hierarchy, ...], rel: str) -> WorkerGroup:
    """A WorkerGroup over the directories found at `rel` below the bases (what a dead agent
    left, or our own parent group at close)."""
    dirs: dict[str, Path] = {}
    for h in hierarchies:
        path = h.base / rel
        if path.is_dir():
            dirs.setdefault("", path)
            for controller in h.controllers:
                if controller != "kill":
                    dirs[controller] = path
    return WorkerGroup(rel, version, dirs, Limits())


def remove_parent(version: int, hierarchies: tuple[Hierarchy, ...], agent: str) -> None:
    """Kill every process below ``fabric-<agent>`` and remove its groups and itself."""
    parent = f"{GROUP_PREFIX}{agent}"
    names: set[str] = set()
    for h in hierarchies:
        with contextlib.suppress(OSError):
            names.update(e for e in os.listdir(h.base / parent) if (h.base / parent / e).is_dir())
    for name in sorted(names):
        group = _existing_group(version, hierarchies, f"{parent}/{name}")
        with contextlib.suppress(KillFailedError, CgroupWriteError):
            group.kill()
        group.remove()
    # Processes in the parent itself: none, unless something put them there.
    itself = _existing_group(version, hierarchies, parent)
    if itself.dirs:
        with contextlib.suppress(KillFailedError, CgroupWriteError):
            itself.kill()
        itself.remove()
