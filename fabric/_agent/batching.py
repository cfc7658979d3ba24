"""Batching of outgoing messages on the agent's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fabric._agent.durability import mark, release_after


def _never(message: Any) -> bool:
    return False


class Batcher:
    """Collects messages produced while one event is handled and hands them over as one
    batch on the next loop turn: one HTTP/2 frame instead of one per message. A message for
    which `acts` is true acts on a decision: the batch carrying it waits until every decision
    taken before it was queued is durable."""

    def __init__(
        self,
        make_batch: Callable[[list[Any]], Any],
        put: Callable[[Any], None],
        acts: Callable[[Any], bool] = _never,
    ) -> None:
        self._pending: list[Any] = []
        self._make_batch = make_batch
        self._put = put
        self._acts = acts
        self._needed = 0
        self._loop = asyncio.get_running_loop()

    def send(self, message: Any, needs: int = 0) -> None:
        """Queue `message`; it leaves once the first `needs` audit records are durable (and,
        if `acts` says it acts on a decision, every record taken before it)."""
        if self._acts(message):
            needs = mark()
        if needs > self._needed:
            self._needed = needs
        self._pending.append(message)
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush_when_durable)

    def _flush_when_durable(self) -> None:
        release_after(self._needed, self.flush)

    def flush(self) -> None:
        """Hand over what is pending now."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._put(self._make_batch(pending))
