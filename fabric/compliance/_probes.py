"""The code the probe tenants run on the fabric's workers.

The module is pickled by value (``cloudpickle.register_pickle_by_value``), so workers need
nothing of the compliance suite installed: only ``fabric``, which every worker imports.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import cloudpickle

import fabric

# A runaway probe spins at most this long, so that one whose budget is never enforced
# (the check then fails) does not hold a worker forever.
SPIN_AT_MOST = 600.0


def _where() -> str:
    return fabric.get_runtime_context().get_node_id()


def _total(values: list[int]) -> int:
    return sum(values)


def _spin() -> None:
    deadline = time.monotonic() + SPIN_AT_MOST
    while time.monotonic() < deadline:
        pass


class _Vault:
    """An actor holding a secret and a counter: its state shows whether it was restarted."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.count = 0

    def read(self) -> str:
        return self.secret

    def incr(self) -> int:
        self.count += 1
        return self.count


def residency_options(label: str | None) -> dict[str, Any]:
    """The ``options(...)`` that give work the residency `label` (None: the default)."""
    return {} if label is None else {"residency": label}


where: Any = fabric.remote(_where)
total: Any = fabric.remote(_total)
spin: Any = fabric.remote(_spin)
Vault: Any = fabric.remote(_Vault)

cloudpickle.register_pickle_by_value(sys.modules[__name__])
