"""The agent's side of the audit log: every decision becomes an entry in the journal before
the agent acts on it (see `durability.py`), and the journal is forwarded to the head.

Entries are written straight into their canonical form (`fabric.audit.encode`'s bytes for
an unsequenced entry) without building an `Entry` first: the agent records a few entries per
task, and this is the hot path. A test holds the two encodings equal; the head decodes every
entry strictly before it sequences it.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from fabric._agent.journal import Journal
from fabric.policy import Decision

_s = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C-accelerated, ensure_ascii=False


def _list(items: Iterable[str]) -> str:
    return "[" + ",".join(_s(i) for i in items) + "]"


def canonical_entry(
    *,
    id: str,
    time: str,
    kind: str,
    tenant: str = "",
    identity: str = "",
    fingerprint: str = "",
    job: str = "",
    task: str = "",
    actor: str = "",
    objects: Iterable[str] = (),
    function: str = "",
    outcome: str = "",
    rules: Iterable[str] = (),
    reasons: Iterable[str] = (),
    inputs: str = "",
    policy: str = "",
    node: str = "",
    parent: str = "",
) -> bytes:
    """The canonical bytes of an unsequenced entry (keys in sorted order, no whitespace)."""
    return (
        f'{{"actor":{_s(actor)},"fingerprint":{_s(fingerprint)},"function":{_s(function)},'
        f'"id":{_s(id)},"identity":{_s(identity)},"inputs":{_s(inputs)},"job":{_s(job)},'
        f'"kind":{_s(kind)},"node":{_s(node)},"objects":{_list(objects)},'
        f'"outcome":{_s(outcome)},"parent":{_s(parent)},"policy":{_s(policy)},'
        f'"reasons":{_list(reasons)},"rules":{_list(rules)},"seq":-1,"task":{_s(task)},'
        f'"tenant":{_s(tenant)},"time":{_s(time)}}}'
    ).encode()


_second = -1
_second_text = ""


def now() -> str:
    """The time as an entry has it ("2026-11-26T03:04:05.123456Z"); the part to the second
    is formatted once a second."""
    global _second, _second_text
    ns = time.time_ns()
    second, micro = divmod(ns // 1000, 1_000_000)
    if second != _second:
        _second = second
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{micro:06d}Z"


class Recorder:
    """Appends this node's decisions to its journal; ids are `<node>/<boot>/<counter>`."""

    def __init__(self, node_id: str, journal: Journal) -> None:
        self.node_id = node_id
        self.journal = journal
        self._prefix = f"{node_id}/{secrets.token_hex(4)}/"
        self._counter = itertools.count()
        self.on_append: Callable[[], None] = lambda: None  # the gate commits soon

    def record(
        self,
        decision: Decision,
        *,
        kind: str,
        tenant: str,
        identity: str = "",
        fingerprint: str = "",
        job: str = "",
        task: str = "",
        actor: str = "",
        objects: Iterable[str] = (),
        function: str = "",
        parent: str = "",
    ) -> str:
        """Journal `decision`; returns the entry's id (a later entry's `parent`)."""
        return self._append(
            kind=kind,
            tenant=tenant,
            identity=identity,
            fingerprint=fingerprint,
            job=job,
            task=task,
            actor=actor,
            objects=objects,
            function=function,
            outcome=decision.outcome.value,
            rules=decision.rule_ids,
            reasons=decision.reasons,
            inputs=decision.input_digest,
            policy=decision.policy_version,
            parent=parent,
        )

    def event(
        self,
        *,
        kind: str,
        tenant: str,
        outcome: str,
        rules: Iterable[str],
        reasons: Iterable[str] = (),
        task: str = "",
        actor: str = "",
        job: str = "",
        policy: str = "",
        parent: str = "",
    ) -> str:
        """Journal something that happened (a task finished), not a decision."""
        return self._append(
            kind=kind,
            tenant=tenant,
            job=job,
            task=task,
            actor=actor,
            outcome=outcome,
            rules=rules,
            reasons=reasons,
            policy=policy,
            parent=parent,
        )

    def _append(self, **fields: Any) -> str:
        entry_id = f"{self._prefix}{next(self._counter)}"
        self.journal.append(canonical_entry(id=entry_id, time=now(), node=self.node_id, **fields))
        self.on_append()
        return entry_id
