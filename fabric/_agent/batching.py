"""Batching of outgoing messages on the agent's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fabric._agent.durability import release


class Batcher:
    """Collects messages produced while one event is handled and hands them over as one
    batch on the next loop turn: one HTTP/2 frame instead of one per message."""

    def __init__(self, make_batch: Callable[[list[Any]], Any], put: Callable[[Any], None]) -> None:
        self._pending: list[Any] = []
        self._make_batch = make_batch
        self._put = put
        self._loop = asyncio.get_running_loop()

    def send(self, message: Any) -> None:
        self._pending.append(message)
        if len(self._pending) == 1:
            self._loop.call_soon(release, self.flush)

    def flush(self) -> None:
        """Hand over what is pending now (`send` schedules this, behind the audit gate)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._put(self._make_batch(pending))
