"""Decide, record, act: outgoing actions wait until the decisions they follow from are durable.

Every message an agent sends to act on a decision (to a worker, a peer or a client) leaves
through a batcher; a batcher hands its flush to `DurableGate.after_durable`, which runs it at
once when the journal holds nothing unsynced, and otherwise after the next group commit.
The fsync runs on a thread of its own, so the event loop keeps deciding meanwhile, and one
fsync covers every decision taken since the last.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable

from fabric._agent.journal import Journal


class DurableGate:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._waiting: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._syncing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "audit-fsync")
        self._loop = asyncio.get_running_loop()
        self._soon = False
        self.on_synced: Callable[[], None] = lambda: None

    def soon(self) -> None:
        """A record was appended: make it durable soon even if no action waits for it."""
        if not self._soon:
            self._soon = True
            self._loop.call_soon(self._commit_soon)

    def _commit_soon(self) -> None:
        self._soon = False
        if self.journal.dirty:
            self._kick()

    def after_durable(self, action: Callable[[], None]) -> None:
        """Run `action` once every record appended so far is durable (at once if it is)."""
        needed = self.journal.size
        if needed <= self.journal.synced and not self._waiting:
            action()
            return
        self._waiting.append((needed, action))
        self._kick()

    def _kick(self) -> None:
        if self._syncing:
            return
        chunks, upto = self.journal.take()
        self._syncing = True
        future = self._loop.run_in_executor(self._executor, self.journal.write, chunks)
        future.add_done_callback(lambda f: self._synced(f, upto))

    def _synced(self, future: asyncio.Future[None], upto: int) -> None:
        self._syncing = False
        future.result()  # a journal that cannot be written stops the agent acting
        self.journal.mark_synced(upto)
        self.on_synced()
        while self._waiting and self._waiting[0][0] <= self.journal.synced:
            _, action = self._waiting.popleft()
            action()
        if self._waiting or self.journal.dirty:
            self._kick()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.journal.sync()


# One agent per process: its gate holds every outgoing flush (batchers, worker channels).
_gate: DurableGate | None = None


def install(gate: DurableGate | None) -> None:
    global _gate
    _gate = gate


def release(action: Callable[[], None]) -> None:
    """Run `action` (a flush of messages that act on decisions) once they are durable."""
    if _gate is None:
        action()
    else:
        _gate.after_durable(action)
