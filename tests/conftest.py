"""Shared fixtures: one embedded cluster (real head and agent processes, real mTLS) per session."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

import fabric
from fabric._agent.isolation import DISABLE_ENV

# Most tests' tasks signal the test through files in pytest's private temporary
# directories, which a worker under its own tenant uid cannot reach: their clusters share
# the agent's uid. The isolation tests start clusters with per-tenant uids themselves.
os.environ.setdefault(DISABLE_ENV, "1")


@pytest.fixture(scope="session")
def cluster() -> Iterator[fabric.RuntimeContext]:
    """A driver connected to a fresh embedded cluster with 2 CPUs."""
    if fabric.is_initialized():
        fabric.shutdown()
    context = fabric.init(num_cpus=2)
    yield context
    fabric.shutdown()


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> object:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
