"""Questions to the audit log: filtered listings and a task's provenance chain.

The store answers one page at a time (``AuditStore.select``); the functions here page
through it by sequence number, so no cursor stays open between the entries they yield and
the log can append in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ._entry import Entry, check_time, decode
from ._errors import StoreError

PAGE = 1000
"""Entries fetched per round trip to the store."""


@dataclass(frozen=True, kw_only=True)
class Query:
    """Filters on entries; every one that is set must hold. Results come in seq order."""

    tenant: str | None = None
    kind: str | None = None
    outcome: str | None = None
    task: str | None = None
    actor: str | None = None
    object: str | None = None
    """An object id among the entry's ``objects``."""
    rule: str | None = None
    """A rule id among the entry's ``rules``."""
    node: str | None = None
    since: str | None = None
    """Entries at or after this time (an entry time string)."""
    until: str | None = None
    """Entries strictly before this time (an entry time string)."""
    limit: int | None = None
    """At most this many entries; None: all."""
    after_seq: int = -1
    """Only entries with a larger seq: the cursor to page on from the last one seen."""
    before_seq: int | None = None
    """Only entries with a smaller seq (``before_seq=size``: those a checkpoint covers)."""

    def __post_init__(self) -> None:
        for name in ("tenant", "kind", "outcome", "task", "actor", "object", "rule", "node"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"query filter {name!r} must be a str or None")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                check_time(name, value)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise ValueError(f"query limit must be None or an int >= 0, got {self.limit!r}")
        if not isinstance(self.after_seq, int) or self.after_seq < -1:
            raise ValueError(f"query after_seq must be an int >= -1, got {self.after_seq!r}")
        if self.before_seq is not None and not isinstance(self.before_seq, int):
            raise ValueError(f"query before_seq must be None or an int, got {self.before_seq!r}")


class Pages(Protocol):
    """The part of an :class:`AuditStore` that queries read."""

    def select(self, query: Query) -> list[tuple[int, bytes]]: ...

    def time_bounds(self, since: str | None, until: str | None) -> tuple[int, int] | None: ...

    def select_ids(self, ids: Sequence[str]) -> list[tuple[int, bytes]]: ...


def run_query(store: Pages, query: Query) -> Iterator[Entry]:
    """The entries matching `query`, in seq order, fetched a page at a time."""
    if query.since is not None or query.until is not None:
        # Recorders' clocks differ, so times are only roughly in seq order: bound the seqs
        # once by the time index, then page by seq within those bounds.
        bounds = store.time_bounds(query.since, query.until)
        if bounds is None:
            return
        before = bounds[1] + 1 if query.before_seq is None else min(query.before_seq, bounds[1] + 1)
        query = replace(query, after_seq=max(query.after_seq, bounds[0] - 1), before_seq=before)
    remaining = query.limit
    after = query.after_seq
    while remaining is None or remaining > 0:
        want = PAGE if remaining is None else min(PAGE, remaining)
        rows = store.select(replace(query, after_seq=after, limit=want))
        for seq, data in rows:
            yield _decode_at(seq, data)
        if len(rows) < want:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def explain(store: Pages, task: str) -> list[Entry]:
    """The provenance chain of `task`, in seq order: every entry about the task and, following
    ``parent`` links upward, the entries they follow from, with every entry about those
    entries' tasks in turn (a nested task's admission names an entry of its parent task).

    A parent id the log does not hold (not yet forwarded) ends that branch of the chain.
    """
    if not isinstance(task, str) or not task:
        raise ValueError(f"explain needs a task id, got {task!r}")
    found: dict[int, Entry] = {}
    tasks_seen: set[str] = set()
    ids_seen: set[str] = set()
    tasks = [task]
    while tasks:
        current = tasks.pop()
        if current in tasks_seen:
            continue
        tasks_seen.add(current)
        parents: set[str] = set()
        for entry in run_query(store, Query(task=current)):
            found[entry.seq] = entry
            ids_seen.add(entry.id)
            parents.add(entry.parent)
        # An entry without a task (a job's admission, say) continues the chain by its own
        # parent; one with a task brings in its whole task.
        while parents := parents - ids_seen - {""}:
            ids_seen |= parents
            next_parents: set[str] = set()
            for seq, data in store.select_ids(sorted(parents)):
                entry = _decode_at(seq, data)
                found[entry.seq] = entry
                next_parents.add(entry.parent)
                if entry.task and entry.task not in tasks_seen:
                    tasks.append(entry.task)
            parents = next_parents
    return [found[seq] for seq in sorted(found)]


def _decode_at(seq: int, data: bytes) -> Entry:
    entry = decode(data)
    if entry.seq != seq:
        raise StoreError(f"the entry stored at seq {seq} says it is at seq {entry.seq}")
    return entry
