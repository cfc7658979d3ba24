"""Facts about the project itself: the public API, the generated protocol code, typed errors."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import fabric
from fabric import exceptions

ROOT = Path(__file__).resolve().parent.parent


def test_public_api_is_exactly_this() -> None:
    # Nothing leaks from the private modules and nothing vanishes by accident.
    assert sorted(fabric.__all__) == [
        "ActorClass",
        "ActorHandle",
        "ObjectRef",
        "RemoteFunction",
        "RuntimeContext",
        "__version__",
        "available_resources",
        "cancel",
        "cluster_resources",
        "exceptions",
        "get",
        "get_actor",
        "get_runtime_context",
        "init",
        "is_initialized",
        "kill",
        "method",
        "nodes",
        "put",
        "remote",
        "shutdown",
        "wait",
    ]
    # Subpackages (fabric.cli, fabric.policy) appear as attributes once imported.
    public = {
        name
        for name, value in vars(fabric).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(fabric.__all__)


def test_every_error_derives_from_the_root() -> None:
    errors = [
        value
        for value in vars(exceptions).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert errors and all(issubclass(e, exceptions.FabricError) for e in errors)


def test_generated_protocol_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_mypy_is_clean() -> None:
    packages = ["fabric", "policy", "cli", "audit", "tests", "benchmarks", "scripts"]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *packages],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:]
