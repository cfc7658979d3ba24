"""Finding, proving and preparing the cgroups a machine offers for workers' budgets.

`detect_kernel_limits` looks for cgroup v2 and v1 mounts, proves a layout works (a probe
group, a limit written for every controller, a helper process moved in and killed through
the group), removes the groups dead agents left beside its own, and returns the
`KernelLimits` (limits.py) the agent makes its workers' groups with. On a machine without
writable cgroups it says why, and the monitor and rlimits stand alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fabric._agent.budget_errors import (
    AgentGroupInUseError,
    BudgetError,
    CgroupWriteError,
    GroupNotEmptyError,
    InvalidGroupNameError,
    KillFailedError,
)
from fabric._agent.limits import (
    CGROUP_MOUNT,
    DISABLE_ENV,
    GROUP_NAME,
    GROUP_PREFIX,
    MOUNTINFO,
    PROBE_MEMORY,
    SELF_CGROUP,
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    Hierarchy,
    KernelLimits,
    Limits,
    read_control,
    remove_parent,
    write_control,
)

log = logging.getLogger(__name__)


def detect_kernel_limits(
    root: Path | None = None, *, agent: str | None = None, use_cgroups: bool = True
) -> KernelLimits:
    """Find and prove the kernel limits this machine offers, and make the agent's parent
    group ``fabric-<agent>``; groups of dead agents found beside it are removed.

    `root` is where cgroups are mounted (default: read from /proc/self/mountinfo, usually
    /sys/fs/cgroup). With `use_cgroups=False`, or FABRIC_NO_CGROUPS=1 in the environment,
    no cgroup is touched. Never raises for a machine without cgroups: the result says why.
    Raises AgentGroupInUseError if a live agent already holds ``fabric-<agent>``.
    """
    agent = agent if agent is not None else f"pid{os.getpid()}"
    if not GROUP_NAME.fullmatch(agent):
        raise InvalidGroupNameError(agent)
    if not use_cgroups:
        return KernelLimits(agent, None, frozenset(), "cgroups disabled by the caller")
    if os.environ.get(DISABLE_ENV) == "1":
        return KernelLimits(agent, None, frozenset(), f"{DISABLE_ENV}=1 is set")
    candidates, reasons = _find_layouts(root)
    for version, hierarchies in candidates:
        try:
            return _open_layout(version, hierarchies, agent)
        except _Unusable as e:
            reasons.append(str(e))
    return KernelLimits(agent, None, frozenset(), "; ".join(reasons) or "none found")


class _Unusable(Exception):
    """A cgroup layout failed its probe; the message says how."""


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of the cgroup mounts."""
    found = []
    try:
        text = read_control(MOUNTINFO)
    except OSError:
        return []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3 or extra[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        found.append((fields[3], mount_point, extra[0], set(extra[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """controller -> own cgroup path in its v1 hierarchy; "" -> own v2 path."""
    own: dict[str, str] = {}
    try:
        text = read_control(SELF_CGROUP)
    except OSError:
        return own
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _base(mount_root: str, mount_point: Path, own: str | None) -> Path:
    """The agent's own cgroup as a directory below `mount_point`."""
    if own is None or own.startswith("/.."):
        return mount_point
    if mount_root != "/":
        if own != mount_root and not own.startswith(mount_root + "/"):
            return mount_point
        own = own[len(mount_root) :] or "/"
    base = mount_point / own.lstrip("/")
    return base if base.is_dir() else mount_point


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _find_layouts(root: Path | None) -> tuple[list[tuple[int, tuple[Hierarchy, ...]]], list[str]]:
    """Candidate layouts, best first, and why others were not candidates."""
    own = _own_paths()
    mounts = _mounts()
    v2: list[Hierarchy] = []
    v1: dict[Path, Hierarchy] = {}
    if root is not None:
        if not root.is_dir():
            return [], [f"{root} does not exist"]
        by_point = {point: (mroot, kind) for mroot, point, kind, _ in mounts}
        if (root / "cgroup.controllers").exists():
            mroot, _ = by_point.get(root, ("/", "cgroup2"))
            own_path = own.get("") if root in by_point else None
            v2.append(_v2_hierarchy(root, _base(mroot, root, own_path)))
        else:
            for controller in V1_CONTROLLERS:
                point = root / controller
                if not (point / "cgroup.procs").exists():
                    continue
                real = point.resolve()
                if real in v1:
                    h = v1[real]
                    v1[real] = Hierarchy(h.mount, h.controllers | {controller}, h.base)
                    continue
                mroot, _ = by_point.get(real, ("/", "cgroup"))
                own_path = own.get(controller) if real in by_point else None
                v1[real] = Hierarchy(real, frozenset({controller}), _base(mroot, real, own_path))
            if not v1:
                return [], [f"{root} is not a cgroup filesystem"]
    else:
        for mroot, point, kind, options in mounts:
            if kind == "cgroup2":
                v2.append(_v2_hierarchy(point, _base(mroot, point, own.get(""))))
                continue
            controllers = frozenset(options & set(V1_CONTROLLERS))
            if controllers:
                own_path = own.get(next(iter(controllers)))
                v1[point] = Hierarchy(point, controllers, _base(mroot, point, own_path))
        if not v1 and not v2:
            return [], ["no cgroup filesystem is mounted"]
    writable_v2 = [h for h in v2 if not _read_only(h.mount)]
    writable_v1 = tuple(sorted((h for h in v1.values() if not _read_only(h.mount)), key=_order))
    if not writable_v2 and not writable_v1:
        mounts_seen = [h.mount for h in [*v2, *v1.values()]]
        if root is None and all(m.is_relative_to(CGROUP_MOUNT) for m in mounts_seen):
            return [], [f"read-only {CGROUP_MOUNT}"]
        return [], [f"read-only {', '.join(map(str, mounts_seen))}"]
    candidates: list[tuple[int, tuple[Hierarchy, ...]]] = []
    # cgroup v2 with controllers first, then v1, then v2 for tracking and kill only (a
    # hybrid machine's /sys/fs/cgroup/unified).
    candidates += [(2, (h,)) for h in writable_v2 if h.controllers]
    if writable_v1:
        candidates.append((1, writable_v1))
    candidates += [(2, (h,)) for h in writable_v2 if not h.controllers]
    return candidates, []


def _order(h: Hierarchy) -> int:
    return min(V1_CONTROLLERS.index(c) for c in h.controllers)


def _v2_hierarchy(mount: Path, base: Path) -> Hierarchy:
    try:
        offered = set(read_control(base / "cgroup.controllers").split())
    except OSError:
        offered = set()
    return Hierarchy(mount, frozenset(offered & set(V2_CONTROLLERS)), base)


@contextlib.contextmanager
def _locked(paths: list[Path], timeout: float = 10.0) -> Iterator[None]:
    """Hold an exclusive flock on each of `paths` (in order) for the block."""
    fds: list[int] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _Unusable(f"{path} stayed locked for {timeout:g} s") from None
                    time.sleep(0.01)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock of directory `path`, or None if a live agent holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _open_layout(version: int, hierarchies: tuple[Hierarchy, ...], agent: str) -> KernelLimits:
    label = f"cgroup v{version}"
    parent_name = f"{GROUP_PREFIX}{agent}"
    bases = list(dict.fromkeys(h.base for h in hierarchies))
    usable: list[Hierarchy] = []
    locks: list[int] = []
    problems: list[str] = []
    try:
        with _locked(bases):
            _clean_leftovers(version, hierarchies, agent)
            for h in hierarchies:
                parent = h.base / parent_name
                try:
                    parent.mkdir()
                except OSError as e:
                    problems.append(f"cannot create {parent}: {e.strerror}")
                    continue
                fd = _try_lock(parent)
                if fd is None:  # cannot happen while the bases are locked
                    raise AgentGroupInUseError(parent)
                locks.append(fd)
                usable.append(h)
        if not usable:
            raise _Unusable(f"{label}: " + "; ".join(problems))
        if version == 2:
            usable = [_enable_v2(usable[0], parent_name, problems)]
        controllers = frozenset().union(*(h.controllers for h in usable))
        limits = KernelLimits(agent, version, controllers, "", tuple(usable), locks)
        locks = []
        try:
            _probe(limits, problems)  # may drop controllers from `limits`
        except BaseException:
            limits.close()
            raise
        limits.reason = "; ".join(problems)
        return limits
    finally:
        for fd in locks:
            os.close(fd)


def _enable_v2(h: Hierarchy, parent_name: str, problems: list[str]) -> Hierarchy:
    """Turn on the controllers below the agent's parent group; those that refuse drop."""
    enabled = set(h.controllers)
    for where in (h.base, h.base / parent_name):
        try:
            active = set(read_control(where / "cgroup.subtree_control").split())
        except OSError:
            active = set()
        for controller in sorted(enabled - active):
            try:
                write_control(where / "cgroup.subtree_control", f"+{controller}")
            except CgroupWriteError as e:
                enabled.discard(controller)
                why = e.cause.strerror
                if e.cause.errno == errno.EBUSY:
                    why = "it holds processes; run the agent in a delegated, empty subtree"
                problems.append(f"{controller} cannot be enabled below {where} ({why})")
    missing = [c for c in V2_CONTROLLERS if c not in h.controllers and c not in enabled]
    if missing and not problems:
        problems.append(f"{', '.join(missing)} not offered by {h.base}")
    return Hierarchy(h.mount, frozenset(enabled), h.base)


def _probe(kernel: KernelLimits, problems: list[str]) -> None:
    """Prove the layout: a group with a limit of every controller, a process moved in and
    killed through the group. Controllers whose limit cannot be written are dropped."""
    label = f"cgroup v{kernel.version}"
    name = f"probe-{os.getpid()}"
    trial = Limits(memory_bytes=PROBE_MEMORY, cpus=1.0, pids=1 << 16)
    for _ in range(len(kernel.controllers) + 1):
        try:
            group = kernel.create_group(name, trial)
            break
        except CgroupWriteError as e:
            dropped = _controller_of(e.path)
            if dropped is None or dropped not in kernel.controllers:
                raise _Unusable(f"{label}: {e}") from e
            problems.append(f"{dropped}: {e}")
            kernel.controllers = kernel.controllers - {dropped}
    else:  # pragma: no cover - every controller was dropped and the loop ran out
        raise _Unusable(f"{label}: no controller accepts limits")
    helper = subprocess.Popen(
        [sys.executable, "-S", "-c", "import os; os.read(0, 1)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        try:
            group.add(helper.pid)
        except CgroupWriteError as e:
            raise _Unusable(f"{label}: {e}") from e
        if helper.pid not in group.pids():
            raise _Unusable(f"{label}: a process moved into {group.paths[0]} is not listed")
        if kernel.version == 2 and (group.dirs[""] / "cgroup.kill").exists():
            kernel.controllers = kernel.controllers | {"kill"}
        try:
            group.kill(timeout=2.0)
        except (CgroupWriteError, KillFailedError) as e:
            if "freezer" not in group.controllers:
                raise _Unusable(f"{label}: {e}") from e
            problems.append(f"freezer: {e}")
            kernel.controllers = kernel.controllers - {"freezer"}
            group.dirs.pop("freezer", None)
            group.controllers = group.controllers - {"freezer"}
            group.kill(timeout=2.0)
        helper.wait(timeout=5.0)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        with contextlib.suppress(GroupNotEmptyError, CgroupWriteError):
            group.remove()


def _controller_of(path: Path) -> str | None:
    prefix = path.name.split(".", 1)[0]
    if prefix == "cpuacct" or prefix == "freezer":
        return prefix
    return prefix if prefix in ("memory", "cpu", "pids") else None


def _clean_leftovers(version: int, hierarchies: tuple[Hierarchy, ...], agent: str) -> None:
    """Kill and remove the groups of dead agents beside ours (their parents' locks are
    free). Our own name held by a live agent is an error."""
    dead: dict[str, list[int]] = {}
    try:
        for h in hierarchies:
            try:
                entries = sorted(os.listdir(h.base))
            except OSError:
                continue
            for entry in entries:
                path = h.base / entry
                if not entry.startswith(GROUP_PREFIX) or not path.is_dir():
                    continue
                fd = _try_lock(path)
                if fd is None:
                    if entry == f"{GROUP_PREFIX}{agent}":
                        raise AgentGroupInUseError(path)
                    continue
                dead.setdefault(entry, []).append(fd)
        for parent in dead:
            try:
                remove_parent(version, hierarchies, parent[len(GROUP_PREFIX) :])
            except BudgetError as e:
                log.warning("cannot remove %s left by a dead agent: %s", parent, e)
    finally:
        for fds in dead.values():
            for fd in fds:
                os.close(fd)
