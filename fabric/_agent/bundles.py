"""Placement groups on the node agent: coordinating a group's reservation, holding bundles,
and routing work into them.

The agent a tenant's session is connected to coordinates the groups that session creates:
it decides where each bundle goes (`decide_bundles`, over the same cluster view tasks are
placed with), reserves the local ones itself and asks peers for the others (`reserve`), and
when every bundle is held makes the group's ready object READY. A refused reservation
abandons the whole attempt (the others are released) and the group is decided again a
moment later or on the next cluster view: all bundles or none.

A node holding a bundle takes its amounts out of its plain free resources and adds them
under the bundle's names (`fabric._bundle_resources`), so work asking for those names is
placed by the ordinary code. Giving a bundle back stops the work that uses it.

Every reservation message carries the attempt it belongs to: an answer that arrives after
its attempt was given up is released at once instead of being taken for the current one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fabric._agent.base import PLACING_RETRY, E, Key, error_info, refusal
from fabric._agent.scheduler import fits, shape_of
from fabric._agent.state import ObjEntry, ObjState, Session, TaskEntry, TaskState, return_id
from fabric._agent.window_budgets import WindowBudgets
from fabric._bundle_resources import (
    ANY_BUNDLE,
    PREFIX,
    group_of,
    group_prefix,
    reserved_resources,
)
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import serialize
from fabric.policy import NodeView, Outcome
from fabric.policy._admission import Usage, decide_admission
from fabric.policy._bundles import MAX_BUNDLES, BundleRequest, Strategy, decide_bundles
from fabric.policy._decision import Decision
from fabric.policy._labels import LabelSelectorError, parse_selector

log = logging.getLogger("fabric._agent.bundles")

GROUP_MESSAGES = frozenset(
    {"create_placement_group", "remove_placement_group", "get_placement_group"}
)
BUNDLE_PEER_MESSAGES = frozenset({"reserve", "reserved", "release", "remove_group"})
# How long a task naming a group this agent does not coordinate may wait for the cluster
# view to show the group's resources (the view lags a reservation by a report or two).
VIEW_GRACE = 2.0
# How long a reservation attempt may wait for its answers before it is given up.
ATTEMPT_TIMEOUT = 10.0
REMOVED_KEPT = 4096  # removed groups remembered, so work sent into them fails at once
# A waiting group is decided again no sooner than this many times the last decision took:
# a group that is costly to decide (a search near its step limit) may not take the agent's
# loop over by being retried every PLACING_RETRY.
DECISION_COST_FACTOR = 10
_EPSILON = 1e-9

BundleKey = tuple[str, bytes, int]  # (tenant, group id, bundle index)


class GroupState(enum.Enum):
    PENDING = "pending"  # not every bundle is held yet
    CREATED = "created"  # every bundle is held


@dataclass(eq=False)
class Group:
    """A placement group this agent coordinates."""

    tenant: str
    group_id: bytes
    bundles: list[dict[str, float]]
    strategy: Strategy
    name: str
    selector: dict[str, str]
    detached: bool
    session_id: int  # the session that created it
    policy_version: str
    state: GroupState = GroupState.PENDING
    attempt: int = 0
    nodes: tuple[str, ...] = ()  # a node per bundle, in the current attempt
    acked: set[int] = field(default_factory=set)
    started: float = 0.0  # when the current attempt began (monotonic)
    retry_at: float = 0.0  # not decided again before (monotonic)
    waiting: list[TaskEntry] = field(default_factory=list)  # work sent in before CREATED

    @property
    def key(self) -> Key:
        return (self.tenant, self.group_id)

    @property
    def ready_id(self) -> bytes:
        return return_id(self.group_id, 0)


@dataclass(eq=False)
class Reservation:
    """A bundle this node holds."""

    coordinator: str
    attempt: int
    bundle: dict[str, float]
    names: dict[str, float]  # what it added to this node's totals


def _bundle_problem(bundle: Mapping[str, float]) -> str | None:
    if not bundle or not any(bundle.values()):
        return "a bundle must ask for some resource"
    for name, amount in bundle.items():
        if not name or name.startswith(PREFIX):
            return f"invalid resource name {name!r} in a bundle"
        if amount < 0 or not math.isfinite(amount):
            return f"invalid amount {amount!r} of {name} in a bundle"
    return None


def _create_problem(create: pb.CreatePlacementGroup) -> str | None:
    if len(create.group_id) != 16:
        return "group_id must be 16 bytes"
    if not 0 < len(create.bundles) <= MAX_BUNDLES:
        return f"a placement group has 1 to {MAX_BUNDLES} bundles"
    if create.strategy not in Strategy.__members__:
        return f"unknown placement strategy {create.strategy!r}"
    for bundle in create.bundles:
        problem = _bundle_problem(bundle.resources)
        if problem is not None:
            return problem
    return None


def _removed(group_id: bytes) -> pb.ErrorInfo:
    return error_info(
        E.PLACEMENT_REFUSED,
        f"placement group {group_id.hex()} was removed: its resources exist nowhere "
        "[rule pg.removed]",
    )


class Bundles(WindowBudgets):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups: dict[Key, Group] = {}  # coordinated here
        # Groups removed or refused here, and why: work sent into them later fails so.
        self.removed_groups: OrderedDict[Key, pb.ErrorInfo] = OrderedDict()
        self.reservations: dict[BundleKey, Reservation] = {}  # bundles held here
        # Bundles held elsewhere that the head's view does not list yet: node -> key ->
        # the names they add there. Placement counts them meanwhile.
        self.unreported: dict[BundleKey, tuple[str, dict[str, float]]] = {}
        self._groups_timer = False
        self._view_waits: weakref.WeakKeyDictionary[TaskEntry, float] = weakref.WeakKeyDictionary()

    # -- sessions --------------------------------------------------------------------

    def _group_message(self, session: Session, message: pb.ClientMessage) -> None:
        which = message.WhichOneof("body")
        if which == "create_placement_group":
            self._create_group(session, message.request_id, message.create_placement_group)
        elif which == "remove_placement_group":
            remove = message.remove_placement_group
            group = self.groups.get((session.tenant, remove.group_id))
            if group is not None:
                self._remove_group(group)
            elif remove.node_id and remove.node_id != self.node_id and remove.node_id in self.nodes:
                self.peers.send(
                    remove.node_id,
                    pb.PeerMessage(
                        remove_group=pb.ReleaseBundle(
                            tenant=session.tenant, group_id=remove.group_id
                        )
                    ),
                )
            # The same answer whether it existed, was removed already or is another
            # tenant's: removing is idempotent and tells nothing.
            self._reply(session, message.request_id, pb.Reply())
        elif which == "get_placement_group":
            name = message.get_placement_group.name
            found = next(
                (g for g in self.groups.values() if g.tenant == session.tenant and g.name == name),
                None,
            )
            if found is None:
                self._reply_error(
                    session,
                    message.request_id,
                    E.INVALID_REQUEST,
                    f"no placement group named {name!r} (a group is found through the agent "
                    "its creator was connected to)",
                )
                return
            self._reply(session, message.request_id, pb.Reply(placement_group=self._info(found)))

    def _info(self, group: Group) -> pb.PlacementGroupInfo:
        return pb.PlacementGroupInfo(
            group_id=group.group_id,
            bundles=[pb.Bundle(resources=b) for b in group.bundles],
            strategy=group.strategy.value,
            name=group.name,
            node_id=self.node_id,
            state=group.state.value,
        )

    def _create_group(
        self, session: Session, request_id: int, create: pb.CreatePlacementGroup
    ) -> None:
        tenant = session.tenant
        policy = self.policy
        problem = _create_problem(create)
        key = (tenant, create.group_id)
        if problem is None and (
            key in self.groups
            or key in self.removed_groups
            or (tenant, return_id(create.group_id, 0)) in self.objects
        ):
            problem = f"placement group id {create.group_id.hex()} is already in use"
        if problem is None and create.name:
            if any(g.tenant == tenant and g.name == create.name for g in self.groups.values()):
                problem = f"a placement group named {create.name!r} already exists"
        if problem is None:
            try:
                parse_selector(create.label_selector)
            except LabelSelectorError as e:
                problem = str(e)
        if problem is None and policy.tenant(tenant) is None:
            problem = f"{tenant!r} is not a tenant"
        if problem is not None:
            self._reply_error(session, request_id, E.INVALID_REQUEST, problem)
            return
        bundles = [dict(b.resources) for b in create.bundles]
        if not policy.open:
            # As for a task: a bundle bigger than the tenant's quota could never be used.
            for bundle in bundles:
                admission = decide_admission(policy, tenant, Usage(), resources=bundle)
                if admission.outcome is Outcome.REFUSE:
                    self._record(admission, kind="admit", tenant=tenant)
                    self._reply(
                        session, request_id, pb.Reply(error=refusal(E.QUOTA_EXCEEDED, admission))
                    )
                    return
        group = Group(
            tenant=tenant,
            group_id=create.group_id,
            bundles=bundles,
            strategy=Strategy[create.strategy],
            name=create.name,
            selector=dict(create.label_selector),
            detached=create.detached,
            session_id=session.session_id,
            policy_version=policy.version,
        )
        decision, nodes = self._decide_group(group)
        if decision.outcome is Outcome.REFUSE and self._refusal_stands(decision):
            # Never satisfiable: the create itself fails, naming the rule.
            self._reply(session, request_id, pb.Reply(error=refusal(E.PLACEMENT_REFUSED, decision)))
            return
        self.groups[key] = group
        ready = ObjEntry(tenant=tenant)
        ready.holders.add(session.session_id)
        ready.subscribers.add(session.session_id)
        ready.pins += 1  # for the group's lifetime: any handle's ready() finds it here
        session.held.add(group.ready_id)
        self.objects[(tenant, group.ready_id)] = ready
        self._reply(session, request_id, pb.Reply())
        self._act_on(group, decision, nodes)

    def _close_session_groups(self, session: Session) -> None:
        """Groups fate-share with the session that created them unless detached."""
        for group in list(self.groups.values()):
            if group.session_id == session.session_id and not group.detached:
                self._remove_group(group)

    # -- deciding and reserving ------------------------------------------------------

    def _refusal_stands(self, decision: Decision) -> bool:
        # Refused by a view that may still miss joining nodes: ask again until the
        # joining window has passed (as for tasks, see Dispatch._route).
        return decision.final or time.monotonic() >= self.joining_until

    def _decide_group(self, group: Group) -> tuple[Decision, tuple[str, ...]]:
        request = BundleRequest(
            tenant=group.tenant,
            group_id=group.group_id,
            bundles=tuple(group.bundles),
            strategy=group.strategy,
            selector=parse_selector(group.selector),
        )
        policy = self.policies.get(group.policy_version) or self.policy
        began = time.monotonic()
        decision, nodes = decide_bundles(request, self._node_views(), policy, self.view_version)
        took = time.monotonic() - began
        group.retry_at = began + took + max(PLACING_RETRY, DECISION_COST_FACTOR * took)
        self._record(decision, kind="placement-group", tenant=request.tenant)
        return decision, nodes

    def _act_on(self, group: Group, decision: Decision, nodes: tuple[str, ...]) -> None:
        if decision.outcome is Outcome.PLACE:
            self._reserve_group(group, nodes)
        elif decision.outcome is Outcome.REFUSE and self._refusal_stands(decision):
            self._end_group(group, refusal(E.PLACEMENT_REFUSED, decision))
        else:
            self._retry_groups_later()

    def _reserve_group(self, group: Group, nodes: tuple[str, ...]) -> None:
        group.attempt += 1
        attempt = group.attempt
        group.nodes = nodes
        group.acked = set()
        group.started = time.monotonic()
        for index, (node, bundle) in enumerate(zip(nodes, group.bundles, strict=True)):
            if group.attempt != attempt or not group.nodes or group.key not in self.groups:
                return  # a local refusal gave this attempt up already
            if node == self.node_id:
                problem = self._reserve_here(
                    group.tenant, group.group_id, index, bundle, attempt, self.node_id
                )
                self._bundle_answer(
                    self.node_id,
                    pb.BundleReserved(
                        tenant=group.tenant,
                        group_id=group.group_id,
                        index=index,
                        ok=problem is None,
                        error=problem or "",
                        attempt=attempt,
                    ),
                )
            else:
                self._note_sent(node, shape_of(bundle))
                self.peers.send(
                    node,
                    pb.PeerMessage(
                        reserve=pb.ReserveBundle(
                            tenant=group.tenant,
                            group_id=group.group_id,
                            index=index,
                            resources=bundle,
                            attempt=attempt,
                        )
                    ),
                )

    def _bundle_answer(self, from_node: str, answer: pb.BundleReserved) -> None:
        group = self.groups.get((answer.tenant, answer.group_id))
        index = answer.index
        if (
            group is None
            or answer.attempt != group.attempt
            or not 0 <= index < len(group.nodes)
            or group.nodes[index] != from_node
        ):
            if answer.ok:  # an answer to an attempt given up (or a group gone): give it back
                self._release(from_node, answer.tenant, answer.group_id, index, answer.attempt)
            return
        if group.state is not GroupState.PENDING:
            return
        if not answer.ok:
            log.info(
                "placement group %s: node %s refused bundle %d (%s); trying again",
                group.group_id.hex(),
                from_node,
                index,
                answer.error,
            )
            self._abandon_attempt(group)
            return
        group.acked.add(index)
        if len(group.acked) == len(group.bundles):
            self._group_created(group)

    def _abandon_attempt(self, group: Group) -> None:
        for node in set(group.nodes):
            self._release(node, group.tenant, group.group_id, -1, group.attempt)
        group.nodes = ()
        group.acked = set()
        self._retry_groups_later()

    def _group_created(self, group: Group) -> None:
        group.state = GroupState.CREATED
        for index, node in enumerate(group.nodes):
            if node != self.node_id:
                names = reserved_resources(
                    group.tenant, group.group_id, index, group.bundles[index]
                )
                self.unreported[(group.tenant, group.group_id, index)] = (node, names)
        self._prune_unreported()
        entry = self.objects.get((group.tenant, group.ready_id))
        if entry is not None and entry.state is ObjState.PENDING:
            entry.inline = self._ready_blob(group)
            entry.state = ObjState.READY
            self._object_ready(group.ready_id, entry)
        waiting, group.waiting = group.waiting, []
        for task in waiting:
            if task.state is TaskState.PLACING and not task.cancelled:
                self._route(task)
        self.on_load_change()

    def _ready_blob(self, group: Group) -> bytes:
        # The ready object's value is the group's handle, as Ray's `pg.ready()` gives it.
        from fabric.util.placement_group import PlacementGroup

        handle = PlacementGroup(
            group.group_id, group.bundles, group.strategy.value, group.name, self.node_id
        )
        return serialize(handle).to_bytes()

    def _end_group(self, group: Group, error: pb.ErrorInfo) -> None:
        """Drop `group` (removed or refused): its bundles go back, its ready object and the
        work waiting for it fail with `error`, and work sent into it later fails too."""
        key = group.key
        if self.groups.pop(key, None) is None:
            return
        self.removed_groups[key] = error
        while len(self.removed_groups) > REMOVED_KEPT:
            self.removed_groups.popitem(last=False)
        for node in set(group.nodes):
            self._release(node, group.tenant, group.group_id, -1, 0)
        for index in range(len(group.bundles)):
            self.unreported.pop((group.tenant, group.group_id, index), None)
        entry = self.objects.get((group.tenant, group.ready_id))
        if entry is not None:
            if entry.state is ObjState.PENDING:
                entry.error = error
                entry.state = ObjState.READY
                self._object_ready(group.ready_id, entry)
            entry.pins -= 1
            self._maybe_free(group.ready_id, entry)
        waiting, group.waiting = group.waiting, []
        for task in waiting:
            if task.state is TaskState.PLACING:
                self._fail(task, error)
        self.on_load_change()

    def _remove_group(self, group: Group) -> None:
        self._end_group(group, _removed(group.group_id))

    def _retry_groups_later(self) -> None:
        if not self._groups_timer:
            self._groups_timer = True

            def retry() -> None:
                self._groups_timer = False
                self._place_pending_groups()

            asyncio.get_running_loop().call_later(PLACING_RETRY, retry)

    def _place_pending_groups(self) -> None:
        now = time.monotonic()
        waiting = False
        for group in list(self.groups.values()):
            if group.state is not GroupState.PENDING or group.key not in self.groups:
                continue
            if group.nodes:  # an attempt whose answers are on their way
                waiting = True
                if now - group.started > ATTEMPT_TIMEOUT:
                    log.warning(
                        "placement group %s: no answer from %s; trying again",
                        group.group_id.hex(),
                        ", ".join(sorted(set(group.nodes))),
                    )
                    self._abandon_attempt(group)
                continue
            if group.retry_at > now:
                waiting = True
                continue
            decision, nodes = self._decide_group(group)
            self._act_on(group, decision, nodes)
        if waiting:
            self._retry_groups_later()

    def _groups_view_changed(self, gone: set[str]) -> None:
        """A new cluster view: bundles of lost nodes, and of lost coordinators, and the
        groups still waiting for capacity."""
        self._prune_unreported()
        for group in list(self.groups.values()):
            lost = sorted(n for n in set(group.nodes) if n in gone)
            if not lost:
                continue
            if group.state is GroupState.PENDING:
                self._abandon_attempt(group)
            else:
                log.warning("placement group %s lost its bundles on %s", group.group_id.hex(), lost)
        orphaned = {
            (tenant, group_id)
            for (tenant, group_id, _), held in self.reservations.items()
            if held.coordinator in gone
        }
        for tenant, group_id in orphaned:
            self._release_here(tenant, group_id, -1, 0, None)
        if any(g.state is GroupState.PENDING and not g.nodes for g in self.groups.values()):
            self._place_pending_groups()

    def _prune_unreported(self) -> None:
        for key, (node, _) in list(self.unreported.items()):
            info = self.nodes.get(node)
            marker = f"{group_prefix(key[0], key[1])}{key[2]}"
            if info is None or marker in info.total:
                del self.unreported[key]

    # -- holding bundles -------------------------------------------------------------

    def _release(self, node: str, tenant: str, group_id: bytes, index: int, attempt: int) -> None:
        if node == self.node_id:
            self._release_here(tenant, group_id, index, attempt, self.node_id)
        else:
            self.peers.send(
                node,
                pb.PeerMessage(
                    release=pb.ReleaseBundle(
                        tenant=tenant, group_id=group_id, index=index, attempt=attempt
                    )
                ),
            )

    def _reserve_here(
        self,
        tenant: str,
        group_id: bytes,
        index: int,
        bundle: dict[str, float],
        attempt: int,
        coordinator: str,
    ) -> str | None:
        """Hold bundle `index` of the group here; why not, if it cannot be."""
        key = (tenant, group_id, index)
        held = self.reservations.get(key)
        if held is not None:
            if held.coordinator != coordinator:
                return f"node {self.node_id} holds this bundle for another agent"
            if held.attempt == attempt:
                return None  # asked twice
            self._release_here(tenant, group_id, index, held.attempt, coordinator)
        problem = _bundle_problem(bundle)
        if problem is None and (len(group_id) != 16 or index < 0):
            problem = "invalid bundle reservation"
        if problem is not None:
            return problem
        if not fits(bundle, self.available):
            return f"node {self.node_id} no longer has the bundle's resources free"
        for name, amount in bundle.items():
            self.available[name] = self.available.get(name, 0.0) - amount
        names = reserved_resources(tenant, group_id, index, bundle)
        for name, amount in names.items():
            self.total[name] = self.total.get(name, 0.0) + amount
            self.available[name] = self.available.get(name, 0.0) + amount
        self.reservations[key] = Reservation(coordinator, attempt, dict(bundle), names)
        self.on_load_change()
        self._schedule_dispatch()  # work already sent here for the bundle may start
        return None

    def _release_here(
        self, tenant: str, group_id: bytes, index: int, attempt: int, coordinator: str | None
    ) -> None:
        """Give back bundle `index` (-1: every bundle) of the group that this node holds
        for `attempt` (0: any) of `coordinator` (None: any), stopping the work using it."""
        keys = [
            key
            for key, held in self.reservations.items()
            if key[0] == tenant
            and key[1] == group_id
            and (index < 0 or key[2] == index)
            and (not attempt or held.attempt == attempt)
            and (coordinator is None or held.coordinator == coordinator)
        ]
        if not keys:
            return
        released = [self.reservations.pop(key) for key in keys]
        prefix = group_prefix(tenant, group_id)
        # The names no longer backed: the released bundles' own, and the group's `*`
        # names once no bundle of it stays here.
        keeps_some = any(k[0] == tenant and k[1] == group_id for k in self.reservations)
        gone = {
            name
            for held in released
            for name in held.names
            if not keeps_some or not name.startswith(f"{prefix}{ANY_BUNDLE}")
        }
        self._stop_work_using(gone, group_id)
        for held in released:
            for name, amount in held.names.items():
                total = self.total.get(name, 0.0) - amount
                if name in gone or total <= _EPSILON:
                    self.total.pop(name, None)
                    self.available.pop(name, None)
                else:
                    self.total[name] = total
                    self.available[name] = self.available.get(name, 0.0) - amount
            for name, amount in held.bundle.items():
                self.available[name] = self.available.get(name, 0.0) + amount
        self.on_load_change()
        self._schedule_dispatch()

    def _stop_work_using(self, names: set[str], group_id: bytes) -> None:
        """Stop the work here that holds any of `names` (released bundle resources), or
        was placed here to wait for them, giving back what it holds first. Work not placed
        yet is left to placement, which refuses it once no node has the names."""
        error = _removed(group_id)

        def uses(resources: Mapping[str, float]) -> bool:
            return any(name in names for name in resources)

        for pool in list(self.workers.values()):
            for worker in list(pool):
                shape = worker.lease_shape
                if shape is None or not uses(dict(shape)):
                    continue
                running = [t for t in worker.running.values() if isinstance(t, TaskEntry)]
                worker.running.clear()
                self._end_lease(worker)
                worker.death_reason = "its placement group was removed"
                worker.kill()
                for task in running:
                    self._fail(task, error)
        for (tenant, actor_id), actor in list(self.actors.items()):
            if uses(actor.resources):
                self._route_kill(
                    pb.KillActor(actor_id=actor_id, no_restart=True, tenant=tenant),
                    "removed with its placement group",
                )
        for task in list(self.tasks.values()):
            if (
                task.state is TaskState.WAITING
                and task.spec.kind != pb.ACTOR_TASK
                and uses(task.spec.resources)
            ):
                self._fail(task, error)

    def _bundle_peer_message(self, from_node: str, message: pb.PeerMessage) -> None:
        which = message.WhichOneof("body")
        if which == "reserve":
            reserve = message.reserve
            problem = self._reserve_here(
                reserve.tenant,
                reserve.group_id,
                reserve.index,
                dict(reserve.resources),
                reserve.attempt,
                from_node,
            )
            self.peers.send(
                from_node,
                pb.PeerMessage(
                    reserved=pb.BundleReserved(
                        tenant=reserve.tenant,
                        group_id=reserve.group_id,
                        index=reserve.index,
                        ok=problem is None,
                        error=problem or "",
                        attempt=reserve.attempt,
                    )
                ),
            )
        elif which == "reserved":
            self._bundle_answer(from_node, message.reserved)
        elif which == "release":
            release = message.release
            # Only the coordinator that reserved a bundle gives it back.
            self._release_here(
                release.tenant, release.group_id, release.index, release.attempt, from_node
            )
        elif which == "remove_group":
            group = self.groups.get((message.remove_group.tenant, message.remove_group.group_id))
            if group is not None:
                self._remove_group(group)

    # -- routing work into groups ----------------------------------------------------

    def _route(self, task: TaskEntry) -> None:
        spec = task.spec
        if spec.kind != pb.ACTOR_TASK and spec.resources:
            key = group_of(spec.resources)
            if key is not None and self._held_back(task, key):
                return
        super()._route(task)

    def _held_back(self, task: TaskEntry, key: Key) -> bool:
        """Whether work into group `key` waits (or fails) here rather than being placed:
        it waits for a group of ours still reserving, and briefly for a view that does not
        show another agent's group yet; it fails for a group removed here."""
        group = self.groups.get(key)
        if group is not None:
            if group.state is GroupState.CREATED:
                return False
            task.state = TaskState.PLACING
            group.waiting.append(task)
            return True
        ended = self.removed_groups.get(key)
        if ended is not None:
            self._fail(task, ended)
            return True
        names = [n for n in task.spec.resources if n.startswith(PREFIX)]
        if any(all(n in view.total for n in names) for view in self._node_views()):
            self._view_waits.pop(task, None)
            return False
        now = time.monotonic()
        until = self._view_waits.setdefault(task, now + VIEW_GRACE)
        if now < until:
            task.state = TaskState.PLACING
            self.placing.append(task)
            self._retry_placing_later()
            return True
        self._view_waits.pop(task, None)
        return False  # placement refuses it: no node has its resources

    def _node_views(self) -> list[NodeView]:
        views = super()._node_views()
        if not self.unreported:
            return views
        extra: dict[str, dict[str, float]] = {}
        for node, names in self.unreported.values():
            more = extra.setdefault(node, {})
            for name, amount in names.items():
                more[name] = more.get(name, 0.0) + amount
        out = []
        for view in views:
            added = extra.get(view.node_id)
            if added:
                total = dict(view.total)
                available = dict(view.available)
                for name, amount in added.items():
                    total[name] = total.get(name, 0.0) + amount
                    available[name] = available.get(name, 0.0) + amount
                view = dataclasses.replace(view, total=total, available=available)
            out.append(view)
        return out
