"""Worker processes: spawned by the agent, one tenant each, over a private local channel.

The channel is a Unix socket pair the agent creates before the fork, so nobody else can
connect to it; frames are a 4-byte little-endian length followed by a protobuf message.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from fabric._agent.durability import mark, release_after, to_worker_acts
from fabric._proto import fabric_pb2 as pb

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")


class WorkerState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


class Worker:
    """One worker process and its channel, as the agent sees it."""

    def __init__(
        self,
        worker_id: int,
        tenant: str,
        process: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        actor_id: bytes = b"",
    ) -> None:
        self.worker_id = worker_id
        self.tenant = tenant
        self.process = process
        self.reader = reader
        self.writer = writer
        self.actor_id = actor_id
        self.state = WorkerState.STARTING
        self.seen_digests: set[bytes] = set()
        # Tasks sent to this worker and not yet finished, in send order.
        self.running: dict[bytes, object] = {}
        self.session_id = 0
        self.death_reason = ""
        # Resources this worker holds for its queue of normal tasks (see NodeAgent._lease).
        self.lease_shape: tuple[tuple[str, float], ...] | None = None
        self.lent = False  # its CPUs are lent back while it blocks in get
        self.reclaiming = False  # asked to hand back queued tasks, answer pending
        self._outbox: list[bytes] = []
        self._needed = 0  # audit records the queued messages wait for (see durability.py)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: pb.ToWorker, needs: int = 0) -> None:
        """Queue `message`; everything queued in one loop turn leaves in one write, once the
        first `needs` audit records are durable (the decision it acts on is among them)."""
        data = message.SerializeToString()
        if to_worker_acts(message):
            needs = mark()  # an answer that may carry a refusal: after every record so far
        if needs > self._needed:
            self._needed = needs
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush_when_durable)
        self._outbox.append(_LEN.pack(len(data)))
        self._outbox.append(data)

    def _flush_when_durable(self) -> None:
        release_after(self._needed, self._flush)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(outbox))

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def read_loop(self, handle: Callable[[Worker, pb.FromWorker], None]) -> None:
        """Feed every message from the worker to `handle` until the channel closes."""
        reader = self.reader
        try:
            while True:
                header = await reader.readexactly(4)
                (length,) = _LEN.unpack(header)
                message = pb.FromWorker()
                message.ParseFromString(await reader.readexactly(length))
                handle(self, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            # A malformed frame means a broken or hostile worker: drop it.
            log.exception("worker %d sent a malformed message; stopping it", self.pid)
        finally:
            self.kill()


class WorkerLauncher:
    """Starts worker processes for the agent."""

    def __init__(
        self,
        node_id: str,
        store_root: Path,
        log_dir: Path | None,
        region: str = "",
        tenant_owner: Callable[[str], tuple[int, int]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.tenant_owner = tenant_owner  # per-tenant (uid, gid), when the agent is root
        self.store_root = store_root
        self.log_dir = log_dir
        self._next_id = 0

    async def spawn(
        self,
        tenant: str,
        store_dir: Path,
        on_message: Callable[[Worker, pb.FromWorker], None],
        on_exit: Callable[[Worker], Awaitable[None] | None],
        actor_id: bytes = b"",
        environment: dict[str, str] | None = None,
    ) -> Worker:
        """Start a worker of `tenant`; `environment` is added to its environment."""
        self._next_id += 1
        worker_id = self._next_id
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            sys.executable,
            "-m",
            "fabric._worker",
            "--fd",
            str(child.fileno()),
            "--tenant",
            tenant,
            "--node-id",
            self.node_id,
            "--store-dir",
            str(store_dir),
            "--region",
            self.region,
        ]
        uid: int | None = None
        gid: int | None = None
        groups: list[int] | None = None
        env = {**os.environ, **environment} if environment else None
        if self.tenant_owner is not None:
            uid, gid = self.tenant_owner(tenant)
            groups = []
            env = {**os.environ, **(environment or {}), "HOME": str(store_dir)}
        stderr = None
        if self.log_dir is not None:
            stderr = open(self.log_dir / f"worker-{tenant}-{worker_id}.log", "ab")
        try:
            process = subprocess.Popen(
                argv,
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                # Own process group: a forced kill takes the worker's children with it.
                start_new_session=True,
                close_fds=True,
                env=env,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        finally:
            child.close()
            if stderr is not None:
                stderr.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=1 << 30)
        worker = Worker(worker_id, tenant, process, reader, writer, actor_id)

        async def supervise() -> None:
            await worker.read_loop(on_message)
            # The channel closed: the process is gone or going; reap it off the loop.
            await asyncio.get_running_loop().run_in_executor(None, process.wait)
            worker.state = WorkerState.DEAD
            writer.close()
            result = on_exit(worker)
            if result is not None:
                await result

        asyncio.get_running_loop().create_task(supervise())
        return worker
