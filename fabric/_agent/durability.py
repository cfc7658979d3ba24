"""Decide, record, act: outgoing actions wait until the decisions they follow from are durable.

Messages that act on a decision (a task sent to a worker or forwarded to a peer, a refusal
answered, an object sent to another node) are marked when they are queued with the journal's
size at that moment (`mark`): every decision taken before them. Their channel's next flush
waits until the journal is durable up to that mark (`release_after`); flushes that carry
only results go at once. One flush to the disk covers every decision taken since the last
(group commit), and commits start at most once a millisecond, so under load each covers many.

The flush runs on the event loop itself (about 0.2 ms on a preallocated file): measured, a
thread of its own cost more, since its every return contends for the interpreter lock with
the loop, than the loop loses waiting.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from fabric import _metrics
from fabric._agent.journal import Journal
from fabric._proto import fabric_pb2 as pb

LAZY_COMMIT = 0.02  # seconds
# Commits start at most this often: under load a commit then covers more decisions (fewer
# flushes to the disk), while a lone decision, long after the last commit, goes at once.
MIN_COMMIT_INTERVAL = 0.001  # seconds


class DurableGate:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._waiting: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._syncing = False
        self._loop = asyncio.get_running_loop()
        self._soon = False
        self._paced = False
        self._last_commit = 0.0
        self.on_synced: Callable[[], None] = lambda: None

    def soon(self) -> None:
        """A record was appended: make it durable soon even if no action waits for it (an
        action that waits commits at once; records nobody waits on are committed together
        every `LAZY_COMMIT` seconds)."""
        if not self._soon:
            self._soon = True
            self._loop.call_later(LAZY_COMMIT, self._commit_soon)

    def _commit_soon(self) -> None:
        self._soon = False
        if self.journal.dirty:
            self._kick()

    def after_durable(self, action: Callable[[], None]) -> None:
        """Run `action` once every record appended so far is durable (at once if it is)."""
        self.after(self.journal.size, action)

    def after(self, needed: int, action: Callable[[], None]) -> None:
        """Run `action` once the first `needed` records are durable (at once if they are)."""
        if needed <= self.journal.synced and not self._waiting:
            action()
            return
        self._waiting.append((needed, action))
        self._kick()

    def _kick(self) -> None:
        if self._syncing or self._paced:
            return
        wait = self._last_commit + MIN_COMMIT_INTERVAL - self._loop.time()
        if wait > 0:
            self._paced = True
            self._loop.call_later(wait, self._unpace)
            return
        self._last_commit = self._loop.time()
        chunks, upto = self.journal.take()
        self._syncing = True
        # A journal that cannot be written raises here and leaves `_syncing` set: the agent
        # then acts on nothing more, rather than act on decisions it could not record.
        started = time.perf_counter()
        self.journal.write(chunks)
        _metrics.audit_committed(time.perf_counter() - started, len(chunks))
        # The actions run on the next turn, not inside whatever appended the record.
        self._loop.call_soon(self._synced, upto)

    def _unpace(self) -> None:
        self._paced = False
        self._kick()

    def _synced(self, upto: int) -> None:
        self._syncing = False
        self.journal.mark_synced(upto)
        self.on_synced()
        while self._waiting and self._waiting[0][0] <= self.journal.synced:
            _, action = self._waiting.popleft()
            action()
        if self._waiting or self.journal.dirty:
            self._kick()

    def close(self) -> None:
        self.journal.sync()


# One agent per process: its gate holds every outgoing flush (batchers, worker channels).
_gate: DurableGate | None = None


def install(gate: DurableGate | None) -> None:
    global _gate
    _gate = gate


def answer_acts(message: pb.ServerMessage) -> bool:
    """Answers and failures may carry a refusal; plain results never act on a decision."""
    return message.HasField("reply") or (
        message.HasField("ready") and message.ready.HasField("error")
    )


def to_worker_acts(message: pb.ToWorker) -> bool:
    """An answer to a worker may carry a refusal (dispatches name their record instead)."""
    return message.HasField("server") and answer_acts(message.server)


def mark() -> int:
    """The number of records a message queued now must wait for."""
    return _gate.journal.size if _gate is not None else 0


def release_after(needed: int, action: Callable[[], None]) -> None:
    """Run `action` once the first `needed` records are durable (at once if they are)."""
    if _gate is None or needed <= _gate.journal.synced:
        action()
    else:
        _gate.after(needed, action)


async def durable() -> None:
    """Wait until every record appended so far is durable."""
    needed = mark()
    if _gate is None or needed <= _gate.journal.synced:
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    _gate.after(needed, wake)
    await done
