"""Kernel limits: what detection finds and says, cgroups with real processes in them (where
this machine lets us write cgroups), and rlimits."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric._agent import limits as limits_module
from fabric._agent import procfs
from fabric._agent.budget_errors import (
    AgentGroupInUseError,
    CgroupUnavailableError,
    GroupExistsError,
    GroupNotEmptyError,
    InvalidGroupNameError,
    RlimitError,
)
from fabric._agent.cgroup_setup import detect_kernel_limits
from fabric._agent.limits import (
    DISABLE_ENV,
    Budget,
    KernelLimits,
    Limits,
    WorkerGroup,
)
from fabric._agent.monitor import KERNEL_RLIMIT_CPU, BudgetBreach, BudgetMonitor
from fabric._agent.rlimits import RLIMITS_ENV, apply_rlimits_from_env, plan_rlimits
from tests.budget_procs import (
    BALLOON,
    BOMB,
    MiB,
    adopting_orphans,
    bomb_cap,
    bomb_uid,
    kill_uid,
    python,
    reap_orphans,
    repo_root,
    uid_processes,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _adopt_orphans() -> Iterator[None]:
    with adopting_orphans():
        yield


_agents = itertools.count()

NO_CGROUPS = "budgets: no writable cgroups ({}); rlimits and the monitor only"


def agent_name() -> str:
    return f"t{os.getpid()}l{next(_agents)}"


# -- detection without cgroups ---------------------------------------------------------


def test_a_plain_directory_is_no_cgroup_filesystem(tmp_path: Path) -> None:
    with detect_kernel_limits(tmp_path, agent="a") as found:
        assert not found.available
        assert found.describe() == NO_CGROUPS.format(f"{tmp_path} is not a cgroup filesystem")
        reason = rf"^no cgroups to put the worker in: {re.escape(str(tmp_path))} is not a"
        with pytest.raises(CgroupUnavailableError, match=reason):
            found.create_group("w", Limits())
    assert list(tmp_path.iterdir()) == []


def test_a_missing_mount_is_said(tmp_path: Path) -> None:
    found = detect_kernel_limits(tmp_path / "nope", agent="a")
    assert found.describe() == NO_CGROUPS.format(f"{tmp_path}/nope does not exist")


def test_cgroups_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    off = detect_kernel_limits(agent="a", use_cgroups=False)
    assert off.describe() == NO_CGROUPS.format("cgroups disabled by the caller")
    monkeypatch.setenv(DISABLE_ENV, "1")
    off = detect_kernel_limits(agent="a")
    assert off.describe() == NO_CGROUPS.format("FABRIC_NO_CGROUPS=1 is set")


def test_a_read_only_mount_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    real = os.statvfs

    def statvfs(path: str | Path) -> object:
        result = real(path)
        if Path(path) != tmp_path:
            return result

        class ReadOnly:
            f_flag = result.f_flag | os.ST_RDONLY

        return ReadOnly()

    monkeypatch.setattr(limits_module.os, "statvfs", statvfs)
    found = detect_kernel_limits(tmp_path, agent="a")
    assert found.describe() == NO_CGROUPS.format(f"read-only {tmp_path}")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 101, "sp ace"])
def test_agent_names_are_one_safe_path_component(name: str) -> None:
    expected = rf"^invalid group name {re.escape(repr(name))}: use 1 to 100 of"
    with pytest.raises(InvalidGroupNameError, match=expected):
        detect_kernel_limits(agent=name)


def _control_files(where: Path, names: dict[str, str]) -> dict[str, Path]:
    where.mkdir()
    for name, content in names.items():
        (where / name).write_text(content)
    return {c: where for c in ("", "memory", "cpu", "pids")}


def test_v2_limit_files_and_what_they_get(tmp_path: Path) -> None:
    """cgroup v2 cannot be written on this kind of machine (v1 holds the controllers), so
    the files a v2 group gets are checked against a directory of empty ones."""
    names = ["memory.max", "memory.swap.max", "memory.oom.group", "cpu.max", "pids.max"]
    dirs = _control_files(tmp_path / "w", dict.fromkeys(names, ""))
    limits_module._write_v2_limits(dirs, Limits(memory_bytes=64 * MiB, cpus=1.5, pids=32))
    written = {name: (tmp_path / "w" / name).read_text() for name in names}
    assert written == {
        "memory.max": str(64 * MiB),
        "memory.swap.max": "0",  # no swapping out of the budget
        "memory.oom.group": "1",  # the kernel kills the whole group at the limit
        "cpu.max": "150000 100000",
        "pids.max": "32",
    }


def test_v1_limit_files_and_what_they_get(tmp_path: Path) -> None:
    names = {
        "memory.limit_in_bytes": "",
        "memory.memsw.limit_in_bytes": "",
        "cpu.cfs_period_us": "50000\n",
        "cpu.cfs_quota_us": "",
        "pids.max": "",
    }
    dirs = _control_files(tmp_path / "w", names)
    limits_module._write_v1_limits(dirs, Limits(memory_bytes=64 * MiB, cpus=0.5, pids=32))
    written = {name: (tmp_path / "w" / name).read_text() for name in names}
    assert written == {
        "memory.limit_in_bytes": str(64 * MiB),
        "memory.memsw.limit_in_bytes": str(64 * MiB),  # memory + swap: no swapping out
        "cpu.cfs_period_us": "50000\n",
        "cpu.cfs_quota_us": "25000",  # half of this group's period
        "pids.max": "32",
    }


def test_kernel_limits_leave_room_for_threads() -> None:
    assert Budget(memory_bytes=MiB, pids=4).kernel_limits(threads_per_process=8) == Limits(
        memory_bytes=MiB, pids=32
    )
    default = Budget(pids=1).kernel_limits().pids
    assert default is not None and default >= 16
    assert Budget(cpu_seconds=1).kernel_limits(cpus=2.0) == Limits(cpus=2.0)


# -- cgroups ---------------------------------------------------------------------------


@pytest.fixture
def cgroups() -> Iterator[KernelLimits]:
    found = detect_kernel_limits(agent=agent_name())
    if not found.available:
        found.close()
        pytest.skip(found.describe())
    with found:
        yield found


def test_detection_proves_a_layout_and_close_removes_it(cgroups: KernelLimits) -> None:
    text = cgroups.describe()
    pattern = (
        rf"^budgets: cgroup v[12] .* under .*/fabric-{cgroups.agent}.*; rlimits and the monitor$"
    )
    assert re.match(pattern, text), text
    assert cgroups.parents and all(p.is_dir() for p in cgroups.parents)
    # The probe group is gone; nothing else is in the parent yet.
    for parent in cgroups.parents:
        assert [p.name for p in parent.iterdir() if p.is_dir()] == []
    cgroups.close()
    assert not any(p.exists() for p in cgroups.parents)


SPIN_THEN_WAIT = """
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.2
while time.process_time() < end:
    pass
sys.stdin.readline()
"""


def _limit_files(group: WorkerGroup) -> dict[str, str]:
    if group.version == 2:
        names = {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}
    else:
        names = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "pids.max"}
    return {
        c: (group.dirs[c] / name).read_text().strip() for c, name in names.items() if group.holds(c)
    }


def test_group_holds_its_limits_and_counts_its_process(cgroups: KernelLimits) -> None:
    group = cgroups.create_group("w", Limits(memory_bytes=64 * MiB, cpus=0.5, pids=32))
    with pytest.raises(GroupExistsError, match=r"^a group named 'w' already exists$"):
        cgroups.create_group("w", Limits())
    with pytest.raises(InvalidGroupNameError):
        cgroups.create_group("../escape", Limits())
    expected = {"memory": str(64 * MiB), "pids": "32"}
    expected["cpu"] = "50000 100000" if group.version == 2 else "50000"
    assert _limit_files(group) == {c: v for c, v in expected.items() if group.holds(c)}
    process = subprocess.Popen(python(SPIN_THEN_WAIT), stdin=subprocess.PIPE)
    assert process.stdin is not None
    try:
        group.add(process.pid)
        assert group.pids() == [process.pid]
        process.stdin.write(b"go\n")
        process.stdin.flush()
        wait_for(lambda: group.usage().cpu_seconds >= 0.15, 20, "0.15 CPU seconds")
        used = group.usage()
        assert used.pids >= 1 and used.memory_bytes > 0
        with pytest.raises(GroupNotEmptyError, match=r"^group 'w' still holds processes \["):
            group.remove()
        group.kill()
        assert group.pids() == []
        assert process.wait(timeout=10) == -signal.SIGKILL
        group.remove()
        assert not any(p.exists() for p in group.paths)
        assert cgroups.groups() == []
    finally:
        process.kill()
        process.wait()


def test_fork_bomb_in_a_group_is_held_at_pids_max_and_killed_whole(
    cgroups: KernelLimits,
) -> None:
    if not cgroups.available or "pids" not in cgroups.controllers:
        pytest.skip("no pids controller")
    uid = bomb_uid()
    group = cgroups.create_group("bomb", Limits(pids=16))
    argv = python(BOMB, str(bomb_cap(uid, 60)), *([] if uid is None else [str(uid)]))
    bomb = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    assert bomb.stdin is not None
    try:
        group.add(bomb.pid)
        bomb.stdin.write(b"go\n")
        bomb.stdin.flush()
        wait_for(lambda: group.events().refused_forks >= 1, 20, "a refused fork")
        assert group.usage().pids <= 16
        group.kill()
        assert group.pids() == []
        assert bomb.wait(timeout=10) == -signal.SIGKILL
        if uid is not None:
            wait_for(lambda: not uid_processes(uid), 10, "the bomb's processes to go")
    finally:
        group.kill()
        if uid is not None:
            kill_uid(uid)
        bomb.kill()
        bomb.wait()
        reap_orphans(bomb.pid)
        group.remove()


def test_the_memory_limit_kills_and_is_counted(cgroups: KernelLimits) -> None:
    if "memory" not in cgroups.controllers:
        pytest.skip("no memory controller")
    group = cgroups.create_group("balloon", Limits(memory_bytes=40 * MiB))
    balloon = subprocess.Popen(python(BALLOON, str(400 * MiB)), stdin=subprocess.PIPE)
    assert balloon.stdin is not None
    try:
        group.add(balloon.pid)
        balloon.stdin.write(b"go\n")
        balloon.stdin.flush()
        assert balloon.wait(timeout=20) == -signal.SIGKILL
        events = group.events()
        assert events.oom_kills == 1
        assert events.memory_peak in (0, 40 * MiB)  # 0: a v2 kernel before memory.peak
    finally:
        balloon.kill()
        balloon.wait()
        group.kill()
        group.remove()


AGENT = """
import subprocess, sys
from fabric._agent.cgroup_setup import detect_kernel_limits
from fabric._agent.limits import Limits
limits = detect_kernel_limits(agent=sys.argv[1])
group = limits.create_group("w", Limits(pids=8))
sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
group.add(sleeper.pid)
print(sleeper.pid, flush=True)
sys.stdin.readline()
"""


def _agent(name: str) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", AGENT, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=repo_root(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _reap(pid: int) -> None:
    """Reap `pid` if it became our zombie (we adopt orphans, see adopting_orphans)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _gone(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is None or stat.zombie


def test_a_dead_agents_groups_are_removed_at_startup_and_a_live_ones_kept() -> None:
    with detect_kernel_limits(agent=agent_name()) as probe:
        if not probe.available:
            pytest.skip(probe.describe())
        bases = [parent.parent for parent in probe.parents]
    dead_name, live_name = agent_name(), agent_name()
    dead, dead_sleeper = _agent(dead_name)
    live, live_sleeper = _agent(live_name)
    try:
        dead.kill()
        dead.wait()
        assert all((b / f"fabric-{dead_name}" / "w").is_dir() for b in bases)
        with detect_kernel_limits(agent=agent_name()):
            assert not any((b / f"fabric-{dead_name}").exists() for b in bases)
            wait_for(lambda: _gone(dead_sleeper), 10, "the dead agent's worker to die")
            _reap(dead_sleeper)
            assert all((b / f"fabric-{live_name}" / "w").is_dir() for b in bases)
            assert not _gone(live_sleeper)
        held = re.escape(f"fabric-{live_name}") + " is held by another live agent"
        with pytest.raises(AgentGroupInUseError, match=held):
            detect_kernel_limits(agent=live_name)
    finally:
        dead.kill()
        live.kill()
        live.wait()
        detect_kernel_limits(agent=agent_name()).close()  # removes what the agents left
    wait_for(lambda: _gone(live_sleeper), 10, "the live agent's worker to die after it")
    _reap(live_sleeper)
    assert not any((b / f"fabric-{live_name}").exists() for b in bases)


def test_close_kills_what_the_groups_still_hold(cgroups: KernelLimits) -> None:
    group = cgroups.create_group("left", Limits())
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        group.add(sleeper.pid)
        cgroups.close()
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert not any(p.exists() for p in group.paths + cgroups.parents)
    finally:
        sleeper.kill()
        sleeper.wait()


def _cgroup2_mounts() -> list[Path]:
    with open("/proc/self/mountinfo") as f:
        return [Path(line.split()[4]) for line in f if " - cgroup2 " in line]


def test_a_cgroup_v2_group_tracks_and_kills() -> None:
    """On a hybrid machine (v1 controllers, an empty v2 hierarchy beside them) this is the
    tracking-and-kill-only group; on a v2 machine, the full one."""
    mounts = _cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup2 mount")
    found = detect_kernel_limits(mounts[0], agent=agent_name())
    if found.version != 2:
        found.close()
        pytest.skip(found.describe())
    with found:
        assert found.describe().startswith("budgets: cgroup v2 ")
        assert "kill" in found.controllers or "freeze" in found.describe()
        group = found.create_group("w", Limits(pids=64))
        process = subprocess.Popen(python(SPIN_THEN_WAIT), stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            group.add(process.pid)
            process.stdin.write(b"go\n")
            process.stdin.flush()
            wait_for(lambda: group.usage().cpu_seconds >= 0.15, 20, "0.15 CPU seconds")
            assert group.usage().pids == 1
            group.kill()
            assert process.wait(timeout=10) == -signal.SIGKILL
            group.remove()
        finally:
            process.kill()
            process.wait()


# -- rlimits ---------------------------------------------------------------------------

GiB = 1 << 30


def test_rlimit_plan_without_cgroups() -> None:
    plan = plan_rlimits(Budget(cpu_seconds=10, memory_bytes=100 * MiB, pids=20))
    assert plan.value("RLIMIT_CORE") == (0, 0)
    assert plan.value("RLIMIT_CPU") == (11, 12)
    assert plan.value("RLIMIT_DATA") == (100 * MiB + GiB, 100 * MiB + GiB)
    assert plan.value("RLIMIT_NPROC") is None
    assert plan.describe() == (
        "RLIMIT_CORE=0/0, RLIMIT_CPU=11/12, RLIMIT_DATA=1178599424/1178599424; "
        "RLIMIT_NPROC not set: workers share the agent's uid"
    )


def test_rlimit_plan_margins_and_per_uid_tasks() -> None:
    plan = plan_rlimits(Budget(cpu_seconds=100, memory_bytes=2 * GiB), own_uid=True)
    assert plan.value("RLIMIT_CPU") == (105, 106)  # 5 % above a large budget
    assert plan.value("RLIMIT_DATA") == (4 * GiB, 4 * GiB)  # the budget again as headroom
    plan = plan_rlimits(Budget(pids=20), own_uid=True, tenant_tasks=200)
    assert plan.value("RLIMIT_NPROC") == (200, 200)
    assert plan_rlimits(Budget(cpu_seconds=0.2)).value("RLIMIT_CPU") == (2, 3)


def test_rlimit_plan_leaves_memory_and_tasks_to_a_cgroup_that_holds_them() -> None:
    dirs = {"": Path("/nonexistent"), "memory": Path("/nonexistent"), "pids": Path("/x")}
    group = WorkerGroup("w", 1, dirs, Limits())
    plan = plan_rlimits(Budget(memory_bytes=MiB, pids=4), group=group)
    assert [r.name for r in plan.limits] == ["RLIMIT_CORE"]
    assert plan.notes == (
        "RLIMIT_DATA not set: the memory cgroup holds the budget",
        "RLIMIT_NPROC not set: the pids cgroup holds the budget",
    )


def _limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """(soft, hard) by name, from /proc/<pid>/limits."""
    found = {}
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            match = re.match(r"^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
            if match:
                found[match[1]] = (match[2], match[3])
    return found


WAIT = "import sys; sys.stdin.readline()"
WAIT_WITH_ENV = "from fabric._agent.rlimits import apply_rlimits_from_env as a; a(); " + WAIT
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_rlimits_from_outside_inside_and_the_environment_agree() -> None:
    plan = plan_rlimits(Budget(cpu_seconds=30, memory_bytes=300 * MiB))
    children = [
        subprocess.Popen(python(WAIT), stdin=subprocess.PIPE, preexec_fn=plan.preexec),
        subprocess.Popen(python(WAIT), stdin=subprocess.PIPE),
        subprocess.Popen(
            [sys.executable, "-c", WAIT_WITH_ENV],
            stdin=subprocess.PIPE,
            env={**CHILD_ENV, **plan.to_env()},
        ),
    ]
    expected = {
        "Max cpu time": ("32", "33"),
        "Max data size": (str(300 * MiB + GiB),) * 2,
        "Max core file size": ("0", "0"),
    }
    try:
        plan.apply(children[1].pid)

        def agree() -> bool:
            found = [_limits_of(child.pid) for child in children]
            return all({name: f[name] for name in expected} == expected for f in found)

        wait_for(agree, 20, "the three children's limits to be set")
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_bad_rlimits_environment_fails_closed() -> None:
    assert apply_rlimits_from_env({}) is None
    message = rf"^cannot parse {RLIMITS_ENV} item 'RLIMIT_AS=1:1'$"
    with pytest.raises(RlimitError, match=message):
        apply_rlimits_from_env({RLIMITS_ENV: "RLIMIT_AS=1:1"})


MEMORY_HOG = """
import sys
try:
    bytearray(200 * 2**20)
    print("allocated")
except MemoryError:
    print("refused", len(bytearray(20 * 2**20)))
"""


def test_rlimit_data_refuses_a_runaway_allocation() -> None:
    plan = plan_rlimits(Budget(memory_bytes=50 * MiB), data_headroom=0)
    assert plan.value("RLIMIT_DATA") == (100 * MiB, 100 * MiB)
    out = subprocess.run(python(MEMORY_HOG), preexec_fn=plan.preexec, capture_output=True)
    assert out.stdout.decode().split() == ["refused", str(20 * MiB)]


SPIN = "while True: pass"


def test_rlimit_cpu_stops_a_spinner_and_unwatch_names_it() -> None:
    """The kernel backstop alone (the monitor samples once a minute here): SIGXCPU after
    one second of CPU, and the monitor attributes the death at unwatch."""
    plan = plan_rlimits(Budget(cpu_seconds=0.2), cpu_margin=0.0)
    assert plan.value("RLIMIT_CPU") == (1, 2)
    reports: list[BudgetBreach] = []
    with BudgetMonitor(reports.append, interval=60.0) as monitor:
        spinner = subprocess.Popen(python(SPIN))
        try:
            plan.apply(spinner.pid)
            monitor.watch("spinner", spinner.pid, Budget(cpu_seconds=0.2))
            assert spinner.wait(timeout=30) == -signal.SIGXCPU
            breach = monitor.unwatch("spinner", returncode=spinner.returncode)
        finally:
            spinner.kill()
            spinner.wait()
    assert breach is not None and reports == [breach]
    assert (breach.budget_name, breach.enforced_by) == ("cpu_seconds", KERNEL_RLIMIT_CPU)


PLAN_UNDER_A_HARD_LIMIT = """
import resource
from fabric._agent.limits import Budget
from fabric._agent.rlimits import plan_rlimits
resource.setrlimit(resource.RLIMIT_CPU, (40, 50))
print(*plan_rlimits(Budget(cpu_seconds=100)).value("RLIMIT_CPU"))
"""


def test_rlimits_never_exceed_the_agents_own_hard_limit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PLAN_UNDER_A_HARD_LIMIT], env=CHILD_ENV, capture_output=True
    )
    assert out.stdout.decode().split() == ["50", "50"], out.stderr.decode()
