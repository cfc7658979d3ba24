"""The node's local run queues: tasks placed here, waiting for resources and a worker.

One FIFO per (tenant, resource shape), so a burst of identical tasks costs O(1) each to
queue and to dispatch, and a task that does not fit never blocks tasks of another shape.
Tasks committed here also count as demand, so placement sees this node as busy before
their resources are actually acquired and spills further work to other nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

from fabric._agent.state import TaskEntry, TaskState

Shape = tuple[tuple[str, float], ...]
QueueKey = tuple[str, Shape]


def shape_of(resources: Mapping[str, float]) -> Shape:
    return tuple(sorted((k, v) for k, v in resources.items() if v > 0))


def fits(need: Mapping[str, float] | Shape, have: Mapping[str, float]) -> bool:
    items = need.items() if isinstance(need, Mapping) else need
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in items if v > 0)


def how_many_fit(shape: Shape, have: Mapping[str, float], limit: int) -> int:
    """How many tasks of `shape` fit into `have` at once (at most `limit`)."""
    count = limit
    for name, amount in shape:
        count = min(count, int((have.get(name, 0.0) + 1e-9) // amount))
    return max(count, 0)


class LocalQueues:
    def __init__(self) -> None:
        self.queues: dict[QueueKey, deque[TaskEntry]] = {}
        self.demand: dict[str, float] = {}
        self.committed = 0

    def commit(self, task: TaskEntry) -> None:
        """`task` will run here: count its resources as demand until it acquires them."""
        if task.committed:
            return
        task.committed = True
        self.committed += 1
        for name, amount in task.spec.resources.items():
            self.demand[name] = self.demand.get(name, 0.0) + amount

    def uncommit(self, task: TaskEntry) -> None:
        if not task.committed:
            return
        task.committed = False
        self.committed -= 1
        for name, amount in task.spec.resources.items():
            self.demand[name] = self.demand.get(name, 0.0) - amount

    def push(self, task: TaskEntry, *, front: bool = False) -> None:
        """`task` has all its arguments here and may run once resources and a worker allow.
        `front` puts it back where it was, for a task a worker handed back."""
        key = (task.spec.tenant, shape_of(task.spec.resources))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)

    def free(self, available: Mapping[str, float]) -> dict[str, float]:
        """What is left of `available` once every committed task got its share."""
        free = dict(available)
        for name, amount in self.demand.items():
            free[name] = free.get(name, 0.0) - amount
        return free

    def heads(self) -> Iterator[tuple[QueueKey, deque[TaskEntry]]]:
        """Non-empty queues, dropping cancelled or finished tasks from their fronts."""
        for key in list(self.queues):
            queue = self.queues[key]
            while queue and (queue[0].cancelled or queue[0].state is not TaskState.WAITING):
                queue.popleft()
            if not queue:
                del self.queues[key]
                continue
            yield key, queue

    def __len__(self) -> int:
        return self.committed
