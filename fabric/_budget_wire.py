"""Budgets on the wire: :class:`~fabric.policy.Limits` to and from the `Budget` message."""

from __future__ import annotations

from fabric._proto import fabric_pb2 as pb
from fabric.policy import Limits
from fabric.policy._budgets import LIMIT_KEYS


def to_wire(limits: Limits, retry: bool = False) -> pb.Budget:
    message = pb.Budget(retry=retry)
    for key in LIMIT_KEYS:
        value = getattr(limits, key)
        if value is not None:
            setattr(message, key, value)
    return message


def from_wire(message: pb.Budget) -> Limits:
    values = {key: getattr(message, key) for key in LIMIT_KEYS if message.HasField(key)}
    return Limits(**values)
