"""The agent's side of the audit log: every decision becomes an entry in the journal before
the agent acts on it (see `durability.py`), and the journal is forwarded to the head.

Entries are written straight into their canonical form (`fabric.audit.encode`'s bytes for
an unsequenced entry) without building an `Entry` first: the agent records a few entries per
task, and this is the hot path. The fields go into a C struct whose JSON encoding, keys in
sorted order, is the canonical one; a test holds the two encodings equal, and the head
decodes every entry strictly before it sequences it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Sequence

import msgspec

from fabric._agent.journal import Journal
from fabric.policy import Decision

_encode = msgspec.json.Encoder().encode


class _Unsequenced(msgspec.Struct, frozen=True):
    """An entry's fields in sorted order, which is the canonical key order; seq -1."""

    actor: str
    fingerprint: str
    function: str
    id: str
    identity: str
    inputs: str
    job: str
    kind: str
    node: str
    objects: Sequence[str]
    outcome: str
    parent: str
    policy: str
    reasons: Sequence[str]
    rules: Sequence[str]
    seq: int
    task: str
    tenant: str
    time: str


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
    objects: Sequence[str] = (),
    function: str = "",
    outcome: str = "",
    rules: Sequence[str] = (),
    reasons: Sequence[str] = (),
    inputs: str = "",
    policy: str = "",
    node: str = "",
    parent: str = "",
) -> bytes:
    """The canonical bytes of an unsequenced entry (keys in sorted order, no whitespace)."""
    return _encode(
        _Unsequenced(
            actor, fingerprint, function, id, identity, inputs, job, kind, node, objects,
            outcome, parent, policy, reasons, rules, -1, task, tenant, time,
        )
    )  # fmt: skip


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
        objects: Sequence[str] = (),
        function: str = "",
        parent: str = "",
    ) -> str:
        """Journal `decision`; returns the entry's id (a later entry's `parent`)."""
        entry_id = f"{self._prefix}{next(self._counter)}"
        self.journal.append(
            _encode(
                _Unsequenced(
                    actor, fingerprint, function, entry_id, identity, decision.input_digest,
                    job, kind, self.node_id, objects, decision.outcome.value, parent,
                    decision.policy_version, decision.reasons, decision.rule_ids, -1, task,
                    tenant, now(),
                )
            )
        )  # fmt: skip
        self.on_append()
        return entry_id

    def event(
        self,
        *,
        kind: str,
        tenant: str,
        outcome: str,
        rules: Sequence[str],
        reasons: Sequence[str] = (),
        task: str = "",
        actor: str = "",
        job: str = "",
        policy: str = "",
        parent: str = "",
    ) -> str:
        """Journal something that happened (a task finished), not a decision."""
        entry_id = f"{self._prefix}{next(self._counter)}"
        self.journal.append(
            _encode(
                _Unsequenced(
                    actor, "", "", entry_id, "", "", job, kind, self.node_id, (), outcome,
                    parent, policy, reasons, rules, -1, task, tenant, now(),
                )
            )
        )  # fmt: skip
        self.on_append()
        return entry_id
