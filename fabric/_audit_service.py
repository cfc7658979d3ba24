"""The head's audit service: the sequencer of :mod:`fabric.audit` behind the Head's audit RPCs.

:class:`HeadAudit` owns the head's audit log (``<state dir>/audit.db``, signed with the
Ed25519 key in ``audit.key``; ``audit.vkey`` is the verifier key to hand out) and serves:

* ``AppendAudit``: a node forwards the entries it journaled. Each must be the canonical,
  unsequenced encoding of an entry recorded by that very node (its ``node`` field and its id
  prefix name the caller's certificate), or the whole batch is refused. Appending is
  idempotent by entry id, so a node simply re-sends what it is not sure arrived.
* ``QueryAudit``: filtered listings, a task's provenance chain, and ``follow`` streams that
  wake on appends. Operators and auditors see every entry; a tenant only its own.
* ``ProveAudit``: an offline-checkable proof bundle of one entry the caller may see.
* ``AuditCheckpoint``: the newest signed checkpoint and a consistency proof from the size the
  caller saw last (RFC 9162 section 2.1.4), which is how a remote verifier detects a
  rollback or a fork.

Threading. SQLite calls and fsyncs block, so none of them runs on the event loop: every call
into the log or its store, reads included, runs on one audit thread (a single-worker
executor) and is awaited. Invariant: only the audit thread touches ``_log`` and ``_store``,
so the store (which is not thread-safe) never sees two callers at once, and the consistency
proof can read the store's subtree hashes directly.

Durability. ``await append(...)`` and ``await record(...)`` return once the entries are in a
committed SQLite transaction (WAL, ``synchronous=FULL``), so "decide, record, act" holds for
whoever awaits them. After each batch the audit thread signs a checkpoint covering it, unless
another batch is already queued behind it, whose checkpoint will then cover both: under load
checkpoints are amortised over batches, yet signed at least every ``SIGN_AT_LEAST_EVERY``
seconds. (Signing costs one Ed25519 signature and one more durable SQLite commit, about
0.2 ms on an SSD: half again the cost of a batch of one entry, a few percent of one of 100.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fabric import _metrics
from fabric._pki import Identity
from fabric._proto import fabric_pb2 as pb
from fabric.audit import (
    AuditError,
    AuditLog,
    Entry,
    EntryError,
    ProofBundle,
    ProofUnavailableError,
    Query,
    SqliteAuditStore,
    StoreError,
    consistency_proof_from,
    decode,
    encode,
    entry_time,
    unsequenced_origin,
    verify_checkpoint,
)
from fabric.policy._model import Policy

if TYPE_CHECKING:
    from fabric._tls import PeerAuthenticator

log = logging.getLogger("fabric.head.audit")

DEFAULT_ORIGIN = "fabric.local/audit"
KEY_NAME = "fabric-audit"
DB_FILE = "audit.db"
KEY_FILE = "audit.key"
VKEY_FILE = "audit.vkey"

PAGE = 1000
"""Entries read from the store per call on the audit thread."""

SIGN_AT_LEAST_EVERY = 0.1
"""Seconds: under a steady stream of batches, a checkpoint is still signed this often."""

INDEX_WHEN_QUIET = 1.0
"""Seconds without an append after which the audit thread builds the query indexes."""
INDEX_STEP = 20_000
"""Entries indexed at a time, so that appends queued meanwhile wait a fraction of a second."""
INDEX_BEHIND_AT_MOST = 100_000
"""Entries the indexes may lag under a load that never pauses; beyond, each append indexes
a step too."""

# Which certificate kinds may call each audit RPC; the head adds these to its ALLOWED_KINDS.
# The handlers narrow further by the policy's roles (a tenant sees only its own entries).
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    "/fabric.v1.Head/AppendAudit": frozenset({"node"}),
    "/fabric.v1.Head/QueryAudit": frozenset({"tenant", "operator"}),
    "/fabric.v1.Head/ProveAudit": frozenset({"tenant", "operator"}),
    "/fabric.v1.Head/AuditCheckpoint": frozenset({"node", "tenant", "operator"}),
}

_T = TypeVar("_T")


class HeadAudit:
    """The head's audit log and its four RPCs. Make one with :meth:`open`; :meth:`close` it."""

    def __init__(
        self,
        audit_log: AuditLog,
        store: SqliteAuditStore,
        signing_key: Ed25519PrivateKey,
        state_dir: Path,
        temporary: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self._log = audit_log
        self._store = store
        self._public_key = signing_key.public_key()
        self.state_dir = state_dir
        self._temporary = temporary
        # One thread does all of the log's work, at a lower CPU priority than the rest of the
        # machine's: agents hold their entries durably in their journals, so sequencing them
        # may wait while tasks run, and never slows them.
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="audit", initializer=_background_priority
        )
        # Appends submitted and not finished. The audit thread signs a checkpoint after a
        # batch when no other is waiting (whose checkpoint would cover both), or when the
        # last one is SIGN_AT_LEAST_EVERY old.
        self._queued_appends = 0
        self._queued_lock = threading.Lock()
        # Audit thread only: the size of the newest checkpoint signed, and when.
        self._signed_size, self._signed_at = -1, time.monotonic()
        # Event-loop side: the size known to be committed, and an event set (then replaced)
        # each time it grows, which `follow` queries wait on.
        self._committed = audit_log.size
        self._grown = asyncio.Event()
        self._closed = False
        self._waiting = 0
        self._boot = secrets.token_hex(8)
        self._counter = itertools.count()
        self._index_timer: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, state_dir: Path | None, origin: str = DEFAULT_ORIGIN) -> HeadAudit:
        """The audit log in `state_dir` (created on first start with a new signing key), or
        in a temporary directory removed on :meth:`close` when `state_dir` is None: the head
        always records."""
        temporary = None
        if state_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="fabric-audit-")
            state_dir = Path(temporary.name)
        created = False
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key, created = _load_or_create_key(state_dir / KEY_FILE)
            store = SqliteAuditStore(state_dir / DB_FILE)
            try:
                # Checks the store's newest checkpoint against the key: a log whose key is
                # lost or replaced is refused, not continued under another key.
                audit_log = AuditLog(store, origin, key, KEY_NAME)
            except BaseException:
                store.close()
                raise
            _write_atomic(state_dir / VKEY_FILE, audit_log.vkey + "\n")
        except BaseException:
            if temporary is not None:
                temporary.cleanup()
            elif created:
                (state_dir / KEY_FILE).unlink(missing_ok=True)
            raise
        log.info("audit log %s: %d entries, signed as %s", origin, audit_log.size, audit_log.vkey)
        return cls(audit_log, store, key, state_dir, temporary)

    # --- properties -----------------------------------------------------------------------

    @property
    def vkey(self) -> str:
        """The verifier key of the log (also in ``<state dir>/audit.vkey``)."""
        return self._log.vkey

    @property
    def origin(self) -> str:
        return self._log.origin

    @property
    def size(self) -> int:
        """Entries committed, as the event loop knows it."""
        return self._committed

    @property
    def followers_waiting(self) -> int:
        """``follow`` queries that have sent every entry so far and wait for new ones."""
        return self._waiting

    # --- writing --------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry]) -> int:
        """Append `entries` (idempotent by id); the log's size once they are durable.
        :class:`EntryError` if an id is in the log with other content (nothing is stored).

        Cancelling the caller does not cancel the append: once submitted, it completes."""
        return await self._append_records([(e.id, encode(e)) for e in _unsequenced(entries)])

    async def _append_records(self, records: list[tuple[str, bytes]]) -> int:
        return await asyncio.shield(self._submit_append(records))

    async def record(
        self,
        kind: str,
        *,
        outcome: str,
        rules: Sequence[str],
        reasons: Sequence[str],
        tenant: str = "",
        identity: str = "",
        node: str = "head",
        inputs: str = "",
        policy: str = "",
        parent: str = "",
    ) -> str:
        """Record one of the head's own decisions; its entry id, once it is durable.

        Await it before acting on the decision. The event loop is never blocked: only the
        awaiting coroutine waits for the commit."""
        entry = self._own_entry(
            kind, outcome, rules, reasons, tenant, identity, node, inputs, policy, parent
        )
        await self.append([entry])
        return entry.id

    def record_nowait(
        self,
        kind: str,
        *,
        outcome: str,
        rules: Sequence[str],
        reasons: Sequence[str],
        tenant: str = "",
        identity: str = "",
        node: str = "head",
        inputs: str = "",
        policy: str = "",
        parent: str = "",
    ) -> str:
        """Like :meth:`record`, without waiting: for events the head reports after the fact.

        The entry is queued on the audit thread at once, so any later ``await append`` or
        ``await record`` returns only once it is durable too. A failure is logged."""
        entry = self._own_entry(
            kind, outcome, rules, reasons, tenant, identity, node, inputs, policy, parent
        )
        self._submit_append([(entry.id, encode(entry))]).add_done_callback(_log_failure)
        return entry.id

    def _own_entry(
        self,
        kind: str,
        outcome: str,
        rules: Sequence[str],
        reasons: Sequence[str],
        tenant: str,
        identity: str,
        node: str,
        inputs: str,
        policy: str,
        parent: str,
    ) -> Entry:
        return Entry(
            id=f"head/{self._boot}/{next(self._counter)}",
            time=entry_time(),
            kind=kind,
            tenant=tenant,
            identity=identity,
            outcome=outcome,
            rules=tuple(rules),
            reasons=tuple(reasons),
            inputs=inputs,
            policy=policy,
            node=node,
            parent=parent,
        )

    def _submit_append(self, records: list[tuple[str, bytes]]) -> asyncio.Future[int]:
        if self._closed:
            raise AuditError("the head's audit log is closed")
        with self._queued_lock:
            self._queued_appends += 1
        future = asyncio.get_running_loop().run_in_executor(self._thread, self._append, records)
        # A done callback, not code after an await: the followers wake even if whoever
        # asked for the append was cancelled meanwhile.
        future.add_done_callback(self._appended)
        return future

    def _appended(self, future: asyncio.Future[int]) -> None:
        """On the event loop: an append finished; wake the followers if the log grew."""
        if future.cancelled() or future.exception() is not None:
            return
        size = future.result()
        if size > self._committed:
            self._committed = size
            self._grown.set()
            self._grown = asyncio.Event()
        self._index_later(INDEX_WHEN_QUIET)

    def _index_later(self, delay: float) -> None:
        """Build the query indexes once no append has come for `delay` seconds (each append
        puts it off again): while nodes are busy, the sequencer stores the log and no more."""
        if self._index_timer is not None:
            self._index_timer.cancel()
        self._index_timer = asyncio.get_running_loop().call_later(delay, self._index_step)

    def _index_step(self) -> None:
        self._index_timer = None
        if self._closed:
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, self._log.index, INDEX_STEP
        )
        future.add_done_callback(self._indexed)

    def _indexed(self, future: asyncio.Future[int]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            log.error("could not index the audit log: %s", future.exception())
        elif future.result() > 0 and self._index_timer is None and not self._closed:
            self._index_later(0)  # more to do: one step after whatever was queued meanwhile

    def _append(self, records: list[tuple[str, bytes]]) -> int:
        """On the audit thread: append, then sign unless another batch is queued."""
        try:
            started = time.perf_counter()
            self._log.append_canonical(records)
            _metrics.audit_appended(time.perf_counter() - started, len(records))
        finally:
            with self._queued_lock:
                self._queued_appends -= 1
                last = self._queued_appends == 0
            due = last or time.monotonic() - self._signed_at >= SIGN_AT_LEAST_EVERY
            if due and self._log.size > self._signed_size:
                self._sign()
        if self._log.unindexed > INDEX_BEHIND_AT_MOST:
            self._log.index(INDEX_STEP)
        return self._log.size

    def _sign(self) -> str:
        text = self._log.checkpoint()
        self._signed_size, self._signed_at = self._log.size, time.monotonic()
        return text

    async def _on_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise AuditError("the head's audit log is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- RPCs -----------------------------------------------------------------------------

    async def AppendAudit(
        self, request: pb.AuditRecords, context: grpc.aio.ServicerContext, identity: Identity
    ) -> pb.AuditAck:
        """A node's journaled entries: all appended, or none (INVALID_ARGUMENT, naming the
        first bad record by its index)."""
        if identity.kind != "node":
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity.uri} is not a node: it may not append",
            )
        problem, records = await self._on_thread(
            _check_records, list(request.entries), identity.name
        )
        if problem is not None:
            log.warning("refused audit records from %s: %s", identity.uri, problem)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            size = await self._append_records(records)
        except EntryError as error:
            # The one problem only the log can see: an id it holds with other content.
            index = _index_named([entry_id for entry_id, _ in records], str(error))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"record {index}: {error}")
        except StoreError as error:
            await context.abort(grpc.StatusCode.DATA_LOSS, f"the audit log: {error}")
        return pb.AuditAck(size=size)

    async def QueryAudit(
        self,
        request: pb.AuditQuery,
        context: grpc.aio.ServicerContext,
        identity: Identity,
        policy: Policy,
    ) -> None:
        """Stream the matching entries (reader/writer style: the head's handler is a
        coroutine that writes with ``context.write``), then with ``follow`` every new one as
        it is appended, until the client cancels."""
        tenant = await _visible_tenant(context, identity, policy)
        if request.explain:
            if not request.task:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "explain needs a task id")
            if request.follow:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "explain cannot follow: ask again later"
                )
            try:
                chain = await self._on_thread(self._log.explain, request.task)
            except StoreError as error:
                await context.abort(grpc.StatusCode.DATA_LOSS, f"the audit log: {error}")
            for entry in chain:
                if tenant is None or entry.tenant == tenant:
                    await context.write(pb.AuditEntry(seq=entry.seq, data=encode(entry)))
            return
        try:
            query = _query_of(request, tenant)
        except (AuditError, ValueError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        remaining, after = query.limit, query.after_seq
        while True:
            # Every entry below `committed` is stored before the pages below are read, so
            # once a page comes back short, all of them have been seen.
            committed = self._committed
            while remaining is None or remaining > 0:
                want = PAGE if remaining is None else min(PAGE, remaining)
                try:
                    page = await self._on_thread(self._page, query, after, want)
                except StoreError as error:
                    await context.abort(grpc.StatusCode.DATA_LOSS, f"the audit log: {error}")
                for seq, data in page:
                    await context.write(pb.AuditEntry(seq=seq, data=data))
                if page:
                    after = page[-1][0]
                if remaining is not None:
                    remaining -= len(page)
                if len(page) < want:
                    break
            if not request.follow or remaining == 0:
                return
            after = max(after, committed - 1)
            if not await self._wait_beyond(after):
                return  # the log closed: the head is stopping

    async def ProveAudit(
        self,
        request: pb.AuditProveRequest,
        context: grpc.aio.ServicerContext,
        identity: Identity,
        policy: Policy,
    ) -> pb.AuditProof:
        """A proof bundle of entry `seq`, if the caller may see it; NOT_FOUND in the same
        words whether there is no such entry or it is another tenant's."""
        tenant = await _visible_tenant(context, identity, policy)
        try:
            bundle = await self._on_thread(self._prove, request.seq)
        except StoreError as error:
            await context.abort(grpc.StatusCode.DATA_LOSS, f"the audit log: {error}")
        if bundle is None or (tenant is not None and decode(bundle.entry).tenant != tenant):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"the audit log has no entry {request.seq} you may see"
            )
        return pb.AuditProof(bundle=bundle.to_json())

    async def AuditCheckpoint(
        self,
        request: pb.AuditCheckpointRequest,
        context: grpc.aio.ServicerContext,
        identity: Identity,
    ) -> pb.AuditCheckpointReply:
        """The newest signed checkpoint, the verifier key, and with `old_size` > 0 the
        consistency proof from `old_size` entries to the checkpoint's size (none when the
        checkpoint is smaller: the caller then sees a rollback)."""
        try:
            checkpoint, proof = await self._on_thread(self._checkpoint, request.old_size)
        except StoreError as error:
            await context.abort(grpc.StatusCode.DATA_LOSS, f"the audit log: {error}")
        return pb.AuditCheckpointReply(checkpoint=checkpoint, vkey=self.vkey, consistency=proof)

    # --- on the audit thread --------------------------------------------------------------

    def _page(self, query: Query, after: int, want: int) -> list[tuple[int, bytes]]:
        page = self._log.query(replace(query, after_seq=after, limit=want))
        return [(entry.seq, encode(entry)) for entry in page]

    def _prove(self, seq: int) -> ProofBundle | None:
        try:
            return self._log.prove(seq)
        except ProofUnavailableError:
            if not 0 <= seq < self._log.size:
                return None
        # In the log, and past the newest checkpoint (its batch's is still to be signed).
        self._sign()
        return self._log.prove(seq)

    def _checkpoint(self, old_size: int) -> tuple[str, list[bytes]]:
        text = self._log.latest_checkpoint()
        if text is None:
            text = self._sign()
        size = verify_checkpoint(text, KEY_NAME, self._public_key).size
        if not 0 < old_size <= size:
            return text, []
        # RFC 9162 section 2.1.4.1: PROOF(old_size, D[size]), from the stored subtree hashes.
        return text, consistency_proof_from(old_size, size, self._store.node_hash)

    # --- follow ---------------------------------------------------------------------------

    async def _wait_beyond(self, seq: int) -> bool:
        """Wait until an entry past `seq` is committed; False if the log closes first."""
        while self._committed - 1 <= seq and not self._closed:
            self._waiting += 1
            try:
                await self._grown.wait()
            finally:
                self._waiting -= 1
        return not self._closed

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the queued work, close the log, end the ``follow`` streams and remove a
        temporary state directory. Call it on the event loop's thread, once the server has
        stopped (it waits for the audit thread)."""
        if self._closed:
            return
        self._closed = True
        self._grown.set()
        self._thread.shutdown(wait=True)
        self._log.close()
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> HeadAudit:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- checks -------------------------------------------------------------------------------


class AuditRpcs:
    """The Head service's audit RPCs, for a servicer that holds the authenticator, the
    head's audit log and the policy in force (the head's service, and tests' own)."""

    auth: PeerAuthenticator
    audit: HeadAudit
    policy: Policy

    async def AppendAudit(
        self, request: pb.AuditRecords, context: grpc.aio.ServicerContext
    ) -> pb.AuditAck:
        identity = await self.auth.identity_async(context)
        return await self.audit.AppendAudit(request, context, identity)

    async def QueryAudit(self, request: pb.AuditQuery, context: grpc.aio.ServicerContext) -> None:
        identity = await self.auth.identity_async(context)
        await self.audit.QueryAudit(request, context, identity, self.policy)

    async def ProveAudit(
        self, request: pb.AuditProveRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuditProof:
        identity = await self.auth.identity_async(context)
        return await self.audit.ProveAudit(request, context, identity, self.policy)

    async def AuditCheckpoint(
        self, request: pb.AuditCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuditCheckpointReply:
        identity = await self.auth.identity_async(context)
        return await self.audit.AuditCheckpoint(request, context, identity)


BACKGROUND_NICE = 10


def _background_priority() -> None:
    """Lower the calling thread's CPU priority (Linux gives each thread its own nice value)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _check_records(
    records: Sequence[bytes], node: str
) -> tuple[str | None, list[tuple[str, bytes]]]:
    """The (id, bytes) of each entry of a node's batch, or the first problem with it
    ("record <i>: ...")."""
    checked: list[tuple[str, bytes]] = []
    seen: dict[str, int] = {}
    for index, data in enumerate(records):
        # (1) Exactly the canonical encoding of an entry (the check is strict), (2) not yet
        # sequenced: only the head gives seqs.
        try:
            entry_id, recorded_by = unsequenced_origin(data)
        except EntryError as error:
            return f"record {index}: {error}", []
        # (3) Recorded by the caller itself: its node field and its id prefix name the node
        # its certificate names, so no node can append (or pre-empt the ids of) another's.
        if recorded_by != node:
            return f"record {index}: it is recorded by node {recorded_by!r}, not by {node!r}", []
        if not entry_id.startswith(f"{node}/"):
            return f"record {index}: its id {entry_id!r} does not start with {node + '/'!r}", []
        # (4) One id, one content, within the batch too (one entry has one encoding).
        first = seen.setdefault(entry_id, index)
        if first != index and checked[first][1] != data:
            return f"record {index}: it repeats the id of record {first} with other content", []
        checked.append((entry_id, data))
    return None, checked


def _unsequenced(entries: Iterable[Entry]) -> list[Entry]:
    return [e if e.seq == -1 else replace(e, seq=-1) for e in entries]


def _log_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the audit log could not record the head's entry: %s", future.exception())


def _index_named(ids: Sequence[str], message: str) -> int:
    """The first of `ids` that the log's error message names."""
    return next((i for i, entry_id in enumerate(ids) if repr(entry_id) in message), 0)


async def _visible_tenant(
    context: grpc.aio.ServicerContext, identity: Identity, policy: Policy
) -> str | None:
    """None if the caller sees every entry (an operator or auditor), else its tenant."""
    who = f"{identity.kind}/{identity.name}"
    if identity.kind == "node":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not read the audit log")
    if policy.role(who) in ("operator", "auditor"):
        return None
    tenant = policy.tenant_of(who) if identity.kind == "tenant" else None
    if tenant is None:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{who} is no operator, auditor or tenant under policy {policy.version}",
        )
    return tenant.name


def _query_of(request: pb.AuditQuery, tenant: str | None) -> Query:
    """The request's filters (empty means unset; limit 0 means none); a tenant's own tenant
    replaces whatever tenant it asked for."""

    def unset_if_empty(value: str) -> str | None:
        return value or None

    return Query(
        tenant=tenant if tenant is not None else unset_if_empty(request.tenant),
        kind=unset_if_empty(request.kind),
        outcome=unset_if_empty(request.outcome),
        task=unset_if_empty(request.task),
        actor=unset_if_empty(request.actor),
        object=unset_if_empty(request.object),
        rule=unset_if_empty(request.rule),
        node=unset_if_empty(request.node),
        since=unset_if_empty(request.since),
        until=unset_if_empty(request.until),
        limit=request.limit or None,
        after_seq=request.after_seq if request.HasField("after_seq") else -1,
    )


# --- files --------------------------------------------------------------------------------


def _load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The signing key in `path` (PEM, PKCS #8), made on first start (mode 0600), and
    whether it was made now."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: of two heads started at once on one state directory, one key wins.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        return key, True
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditError(
            f"the audit signing key {path} is readable by others (mode {mode:o}); "
            "chmod 600 it, or rotate it if it may have leaked"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise AuditError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 key")
    return loaded, False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
