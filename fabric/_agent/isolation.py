"""Which Unix user a tenant's workers run as.

When the agent runs as root, each tenant's workers run under a uid of their own, so one
tenant's code cannot read another's objects, the node's private key or the CA's: plain
file permissions then separate what a shared uid cannot. That needs an interpreter and
packages other users can read; where they are not (e.g. a Python installed under a 0700
home), workers share the agent's uid and the agent says so when it starts.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import sysconfig
from pathlib import Path

import fabric

# Far above any uid a distribution hands out, so no real account is ever reused.
TENANT_UID_BASE = 2_000_000_000
TENANT_UID_SPAN = 1 << 24
DISABLE_ENV = "FABRIC_SHARED_WORKER_UID"


def tenant_uid(tenant: str) -> tuple[int, int]:
    """(uid, gid) for `tenant`'s workers: the same on every agent of a host, so a
    tenant's workers of two agents (a local cluster) agree, and no other tenant's."""
    digest = hashlib.sha256(f"fabric-tenant:{tenant}".encode()).digest()
    uid = TENANT_UID_BASE + int.from_bytes(digest[:3], "big") % TENANT_UID_SPAN
    return uid, uid


def _readable_by_others(path: Path) -> str | None:
    """Why other users cannot reach `path`, or None if they can."""
    path = path.resolve()
    for parent in [*reversed(path.parents), path]:
        try:
            mode = parent.stat().st_mode
        except OSError as e:
            return f"{parent}: {e.strerror}"
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return f"{parent} is not searchable by other users"
    if not path.stat().st_mode & stat.S_IROTH:
        return f"{path} is not readable by other users"
    return None


def separate_uids_unavailable() -> str | None:
    """None if workers can run under per-tenant uids here, else the reason they cannot."""
    if os.environ.get(DISABLE_ENV) == "1":
        return f"{DISABLE_ENV}=1 is set"
    if os.geteuid() != 0:
        return "the agent does not run as root"
    needed = [
        Path(sys.executable),
        Path(sysconfig.get_paths()["stdlib"]),
        Path(sysconfig.get_paths()["purelib"]),
        Path(sysconfig.get_paths()["platlib"]),
        Path(fabric.__file__).parent,
    ]
    for path in needed:
        problem = _readable_by_others(path)
        if problem is not None:
            return f"the Python runtime is not usable by other users ({problem})"
    return None
