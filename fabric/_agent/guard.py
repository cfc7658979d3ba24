"""Declared invariants, checked before every dispatch.

Before a task or an actor's creation or call is sent to a worker or to another node, and
before an object's bytes go to another node, the agent describes the dispatch as
:class:`~fabric.policy.DispatchFacts` (who, what, which node with which labels, where its
inputs may live and which data classes they derive from, what the tenant holds) and runs
the policy's compiled invariants and the registered hooks over them. A violation refuses
the dispatch: the Decision, citing ``invariant.<name>``, is journaled, and the work fails
with ``INVARIANT_VIOLATED`` naming the invariant and the values that broke it.

With no invariant declared and no hook registered, nothing is built or checked.
"""

from __future__ import annotations

import hashlib
import re

from fabric import _metrics
from fabric._agent.base import AgentBase, E, error_info
from fabric._agent.state import TaskEntry
from fabric._proto import fabric_pb2 as pb
from fabric.policy import Decision, DispatchFacts, Outcome, Violation, check_invariants
from fabric.policy._admission import Usage
from fabric.policy._hooks import INVARIANT_HOOKS

_REGION = re.compile(r"[a-z][a-z0-9-]{0,62}")  # a plain value: that region, nothing else
_ACTION = {pb.NORMAL_TASK: "task", pb.ACTOR_CREATION: "actor.create", pb.ACTOR_TASK: "actor.call"}


class Guard(AgentBase):
    """The agent's invariant checks (see the module docstring)."""

    def _guarded(self) -> bool:
        return bool(self.policy.invariants) or len(INVARIANT_HOOKS) > 0

    def _task_refusal(self, task: TaskEntry, node_id: str) -> pb.ErrorInfo | None:
        """The refusal of dispatching `task` to `node_id` (this node: to a worker), if an
        invariant forbids it; recorded before it is returned."""
        if not self._guarded():
            return None
        violation = self._task_violation(task, node_id)
        if violation is None:
            return None
        return self._refusal(violation, task.spec, task.spec.tenant, ())

    def _task_violation(self, task: TaskEntry, node_id: str) -> Violation | None:
        """The invariant (or hook) that forbids `task` on `node_id`, checked, not recorded."""
        spec = task.spec
        region, labels = self._node_facts(node_id)
        resources = spec.resources
        facts = DispatchFacts(
            tenant=spec.tenant,
            action=_ACTION.get(spec.kind, "task"),
            node_region=region,
            node_labels=labels,
            input_regions=self._regions(task.residency),
            task_region=_asked_region(spec),
            task_residency=spec.residency_label or None,
            cpus=resources.get("CPU", 0.0),
            gpus=resources.get("GPU", 0.0),
            memory=resources.get("memory", 0.0),
            input_classes=task.classes,
            **self._usage_facts(spec.tenant),
        )
        return check_invariants(self.policy.invariants, facts)

    def _forbidden_nodes(self, task: TaskEntry) -> dict[str, Violation]:
        """The live nodes an invariant forbids `task` on, with the invariant: placement
        leaves them out, so that a node the invariants allow is chosen when there is one."""
        if not self._guarded():
            return {}
        candidates = [self.node_id, *(n.node_id for n in self.nodes.values() if n.alive)]
        forbidden = {}
        for node_id in dict.fromkeys(candidates):
            violation = self._task_violation(task, node_id)
            if violation is not None:
                forbidden[node_id] = violation
        return forbidden

    def _transfer_refusal(
        self,
        tenant: str,
        object_id: bytes,
        residency: frozenset[str] | None,
        classes: frozenset[str],
        node_id: str,
    ) -> pb.ErrorInfo | None:
        """The refusal of sending object `object_id`'s bytes to `node_id`, if an invariant
        forbids it; recorded before it is returned."""
        violation = self._transfer_violation(tenant, residency, classes, node_id)
        if violation is None:
            return None
        return self._refusal(violation, None, tenant, (object_id,))

    def _transfer_violation(
        self, tenant: str, residency: frozenset[str] | None, classes: frozenset[str], node_id: str
    ) -> Violation | None:
        """The invariant (or hook) that forbids data of `residency` and `classes` on
        `node_id`, checked, not recorded."""
        if not self._guarded():
            return None
        region, labels = self._node_facts(node_id)
        facts = DispatchFacts(
            tenant=tenant,
            action="transfer",
            node_region=region,
            node_labels=labels,
            input_regions=self._regions(residency),
            input_classes=classes,
            **self._usage_facts(tenant),
        )
        return check_invariants(self.policy.invariants, facts)

    def _refusal(
        self,
        violation: Violation,
        spec: pb.TaskSpec | None,
        tenant: str,
        objects: tuple[bytes, ...],
    ) -> pb.ErrorInfo:
        """Record the refusal `violation` makes, then return the error it answers with."""
        policy = self.policy
        digest = hashlib.sha256(f"{violation!r}\0{policy.version}".encode()).hexdigest()
        decision = Decision(
            Outcome.REFUSE,
            None,
            (violation.rule_id,),
            (violation.message,),
            digest,
            policy.version,
        )
        parent = spec.audit_parent if spec is not None else ""
        _metrics.invariant_violation(tenant, violation.invariant)
        self._record(
            decision, spec, kind="invariant", tenant=tenant, objects=objects, parent=parent
        )
        info = error_info(
            E.INVARIANT_VIOLATED,
            f"{violation.message} [rule {violation.rule_id}, policy {policy.version}]",
        )
        info.invariant = violation.invariant
        return info

    def _node_facts(self, node_id: str) -> tuple[str, dict[str, str]]:
        if node_id == self.node_id:
            return self.region, dict(self.labels)
        info = self.nodes.get(node_id)
        if info is None:
            return "", {}
        return info.region, dict(info.labels)

    def _regions(self, residency: frozenset[str] | None) -> frozenset[str]:
        """Where inputs may live; "anywhere" is every region the policy declares."""
        if residency is not None:
            return residency
        return frozenset(self.policy.regions)

    def _usage_facts(self, tenant: str) -> dict[str, float]:
        usage = self.usage.get(tenant) or Usage()
        held = self.held.get(tenant, {})
        return {
            "usage_tasks": usage.tasks,
            "usage_actors": usage.actors,
            "usage_cpus": held.get("CPU", 0.0),
            "usage_gpus": held.get("GPU", 0.0),
            "usage_memory": held.get("memory", 0.0),
            "usage_object_store": self.store.tenant_bytes(tenant),
        }


def _asked_region(spec: pb.TaskSpec) -> str | None:
    """The one region the request names (``options(region=...)`` or a plain ``region``
    label selector value), if it names exactly one."""
    value = spec.label_selector.get("region", "")
    return value if _REGION.fullmatch(value) else None
