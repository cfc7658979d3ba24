"""What the checks run against: the head, its live nodes, the probes' sessions, the audit log.

:class:`ComplianceConfig` is what the operator gives (the CLI's options, or the pytest
plugin's); :class:`ComplianceContext` turns it into connections. It reads the policy the
suite was told is in force to know what to probe, and talks to the fabric only as the
outside world can: over mutual TLS with the certificates of the probe tenants and of the
operator (or auditor) that reads the audit log. It never uses a node's certificate.

Sessions are opened lazily, one per (probe, node), and closed by :meth:`close`. The
public API (``fabric.get``, ``.remote()``...) acts for one session at a time through
:meth:`ComplianceContext.acting_as`, so the probes can play against each other from one
process; the process's own ``fabric.init()`` client, if any, is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fabric.compliance._errors import CheckFailed, ConfigError

if TYPE_CHECKING:
    import grpc

    from fabric._client import CoreClient
    from fabric._pki import CredentialPaths, Credentials
    from fabric._proto import fabric_pb2 as pb
    from fabric._proto import fabric_pb2_grpc as rpc
    from fabric.audit import Entry
    from fabric.policy import Policy, TenantPolicy

__all__ = ["ComplianceConfig", "ComplianceContext", "LiveNode", "Probe"]

DEFAULT_TIMEOUT = 30.0
CLOSE_GRACE = 2.0  # seconds the sessions get to end cleanly when the suite is done
_POLL = 0.05
_T = TypeVar("_T")


@dataclass(frozen=True)
class ComplianceConfig:
    """Where the fabric is and who the suite plays.

    `probes` are tenant identities (``tenant/NAME``) the policy declares, at least two;
    `operator` is an operator or auditor identity (``operator/NAME``) that reads the whole
    audit log. Their certificates are in `certs` laid out like a CA directory
    (``ca.pem``, ``crl.pem``, ``issued/<kind>-<name>.pem|.key``; ``ca.key`` only where the
    checks that issue certificates should run). `vkey` is the audit log's verifier key, or
    a file holding it: the operator's own copy, never one the head sends.
    """

    address: str
    certs: Path
    policy: Path
    probes: tuple[str, ...]
    operator: str
    vkey: str | None = None
    allow_revoke: bool = False
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Probe:
    """A probe tenant: the certificate identity the suite connects as, and its policy."""

    identity: str
    policy: TenantPolicy

    @property
    def tenant(self) -> str:
        return self.policy.name


@dataclass(frozen=True)
class LiveNode:
    """A node the head reports alive."""

    node_id: str
    region: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class ComplianceContext:
    """The connections and the knowledge every check shares (see the module docstring)."""

    def __init__(self, config: ComplianceConfig) -> None:
        from fabric.policy import PolicyError, load_policy

        self.config = config
        self.timeout = config.timeout
        try:
            self.policy: Policy = load_policy(config.policy)
        except PolicyError as error:
            raise ConfigError(f"--policy {config.policy}: {error.diagnostics()}") from error
        except OSError as error:
            raise ConfigError(f"cannot read the policy {config.policy}: {error}") from error
        if self.policy.open:
            raise ConfigError(f"{config.policy} is the open policy: it declares no probe tenants")
        self.probes = tuple(self._probe(identity) for identity in config.probes)
        if len({p.tenant for p in self.probes}) < 2:
            raise ConfigError("the suite needs at least two probes of different tenants")
        _identity(config.operator, "operator")
        if self.policy.role(config.operator) is None:
            raise ConfigError(
                f"{config.operator} is neither an operator nor an auditor under {config.policy}"
            )
        self.vkey()  # a malformed --vkey is refused now, not halfway through a run
        self._credentials: dict[str, Credentials] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._sessions: dict[tuple[str, str], CoreClient] = {}
        self._nodes: list[LiveNode] | None = None
        self.start_checkpoint: str | None = None
        # Tasks the probes ran to completion, as (tenant, task id hex): the audit checks
        # look for every one of them in the log.
        self.completed_tasks: list[tuple[str, str]] = []

    def _probe(self, identity: str) -> Probe:
        _identity(identity, "tenant")
        tenant = self.policy.tenant_of(identity)
        if tenant is None:
            raise ConfigError(f"probe {identity} is no tenant of {self.config.policy}")
        return Probe(identity, tenant)

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> ComplianceContext:
        """Reach the head as the operator: its live nodes, and the audit log's checkpoint
        now (the audit checks prove the log only grew from it)."""
        # grpc core logs every refused handshake on stderr, and the checks provoke many;
        # it reads this when it is first loaded.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import grpc

        from fabric._proto import fabric_pb2 as pb

        try:
            nodes = self.nodes(refresh=True)
            reply = self.head().AuditCheckpoint(pb.AuditCheckpointRequest(), timeout=self.timeout)
        except grpc.RpcError as error:
            self.close()
            raise ConfigError(
                f"cannot reach the head at {self.config.address} as {self.config.operator}: "
                f"{_rpc_text(error)}"
            ) from error
        except BaseException:
            self.close()
            raise
        if not nodes:
            self.close()
            raise ConfigError(f"the head at {self.config.address} reports no live node")
        self.start_checkpoint = reply.checkpoint
        return self

    def close(self) -> None:
        closing = "closed by the compliance suite"
        clients = list(self._sessions.values())
        self._sessions.clear()
        for client in clients:
            client.closed_reason = closing
            with contextlib.suppress(Exception):
                client.transport.close()
        # The transports end in their own threads, which replace the reason once the
        # session is over; a process exiting before that leaves their I/O half done.
        deadline = time.monotonic() + CLOSE_GRACE
        while any(c.closed_reason == closing for c in clients) and time.monotonic() < deadline:
            time.sleep(_POLL)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> ComplianceContext:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- certificates ------------------------------------------------------------------

    def credential_paths(self, identity: str) -> CredentialPaths:
        """Where `identity`'s certificate and key are in the certificates directory."""
        from fabric._pki import CredentialPaths

        kind, name = identity.split("/", 1)
        certs = self.config.certs
        paths = CredentialPaths(
            cert=certs / "issued" / f"{kind}-{name}.pem",
            key=certs / "issued" / f"{kind}-{name}.key",
            ca=certs / "ca.pem",
            crl=certs / "crl.pem",
        )
        for path in (paths.ca, paths.crl, paths.cert, paths.key):
            if not path.is_file():
                raise ConfigError(f"missing certificate file for {identity}: {path}")
        return paths

    def credentials(self, identity: str) -> Credentials:
        from fabric._pki import Credentials, PKIError

        creds = self._credentials.get(identity)
        if creds is None:
            try:
                creds = Credentials.load(self.credential_paths(identity))
            except PKIError as error:
                raise ConfigError(f"{identity}: {error}") from error
            self._credentials[identity] = creds
        return creds

    @property
    def ca_pem(self) -> bytes:
        return self.credentials(self.config.operator).ca_pem

    def vkey(self) -> str | None:
        """The audit log's verifier key the operator gave (itself or a file), or None."""
        from fabric.audit import KeyFormatError, parse_vkey

        given = self.config.vkey
        if given is None:
            return None
        path = Path(given).expanduser()
        try:
            text = path.read_text().strip() if path.is_file() else given.strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read the verifier key {path}: {error}") from error
        try:
            parse_vkey(text)
        except KeyFormatError as error:
            raise ConfigError(f"--vkey {given}: {error}") from error
        return text

    # -- the head ----------------------------------------------------------------------

    def channel(self, identity: str | None = None) -> grpc.Channel:
        """A mutual-TLS channel to the head as `identity` (default: the operator)."""
        from fabric._tls import secure_channel

        identity = identity or self.config.operator
        channel = self._channels.get(identity)
        if channel is None:
            channel = self._channels[identity] = secure_channel(
                self.config.address, self.credentials(identity)
            )
        return channel

    def head(self, identity: str | None = None) -> rpc.HeadStub:
        from fabric._proto import fabric_pb2_grpc as rpc

        return rpc.HeadStub(self.channel(identity))

    def nodes(self, refresh: bool = False) -> list[LiveNode]:
        """The nodes the head reports alive, by node id."""
        from fabric._proto import fabric_pb2 as pb

        if self._nodes is None or refresh:
            info = self.head().Status(pb.Empty(), timeout=self.timeout)
            self._nodes = sorted(
                (
                    LiveNode(n.node_id, n.region, n.address, dict(n.labels))
                    for n in info.nodes
                    if n.alive
                ),
                key=lambda n: n.node_id,
            )
        return list(self._nodes)

    # -- what the policy allows a probe ------------------------------------------------

    def may_run(self, probe: Probe, region: str) -> bool:
        regions = probe.policy.run_regions
        return regions is None or region in regions

    def residency(self, probe: Probe, label: str | None = None) -> frozenset[str]:
        """The regions `probe`'s data labelled `label` (None: its default) may live in."""
        regions = self.policy.residency(probe.policy, label)
        return frozenset(self.policy.regions) if regions is None else regions

    def home(self, probe: Probe, label: str | None = None) -> LiveNode | None:
        """A live node where `probe` may run and keep data labelled `label`."""
        allowed = self.residency(probe, label)
        for node in self.nodes():
            if self.may_run(probe, node.region) and node.region in allowed:
                return node
        return None

    # -- sessions ----------------------------------------------------------------------

    def session(self, probe: Probe, node: LiveNode) -> CoreClient:
        """`probe`'s driver session with the agent of `node`, opened on first use."""
        from fabric._driver import connect

        key = (probe.identity, node.node_id)
        client = self._sessions.get(key)
        if client is None or client.closed_reason is not None:
            creds = self.credentials(probe.identity)
            client = self._sessions[key] = connect(node.address, creds, timeout=self.timeout)
        return client

    @contextlib.contextmanager
    def acting_as(self, client: CoreClient) -> Iterator[CoreClient]:
        """Make `client` the one the public API acts for, then restore the previous one."""
        from fabric import _state

        previous = _state.client
        _state.client = client
        try:
            yield client
        finally:
            _state.client = previous

    @contextlib.contextmanager
    def acting(self, probe: Probe, node: LiveNode) -> Iterator[CoreClient]:
        with self.acting_as(self.session(probe, node)) as client:
            yield client

    # -- the audit log -----------------------------------------------------------------

    def audit(self, query: pb.AuditQuery, identity: str | None = None) -> list[Entry]:
        """The entries `query` matches, as `identity` (default: the operator) may see them."""
        from fabric.audit import decode

        stub = self.head(identity)
        return [decode(e.data) for e in stub.QueryAudit(query, timeout=self.timeout)]

    def audit_position(self) -> int:
        """The seq of the newest entry in the log now (-1: none): entries of decisions
        taken after this call have a greater one."""
        from fabric._proto import fabric_pb2 as pb
        from fabric.audit import parse_vkey, verify_checkpoint

        reply = self.head().AuditCheckpoint(pb.AuditCheckpointRequest(), timeout=self.timeout)
        # The head's own key will do to read the size: this is a position, not evidence.
        name, key = parse_vkey(reply.vkey)
        size = verify_checkpoint(reply.checkpoint, name, key).size
        newer = self.audit(pb.AuditQuery(after_seq=size - 1))
        return newer[-1].seq if newer else size - 1

    def wait_for_entries(
        self,
        query: pb.AuditQuery,
        what: str,
        accept: Callable[[Entry], bool] = lambda entry: True,
        identity: str | None = None,
    ) -> list[Entry]:
        """The entries `query` matches that `accept`, once there is at least one; agents
        forward their journals to the head in the background, so this waits up to the
        timeout, then fails the check naming `what` it was looking for."""

        def found() -> list[Entry]:
            return [e for e in self.audit(query, identity) if accept(e)]

        return self.wait_until(found, f"{what} in the audit log")

    def wait_until(self, condition: Callable[[], _T], what: str) -> _T:
        """`condition()` once it is truthy; fails the check after the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise CheckFailed(f"no {what} within {self.timeout:g} s")
            time.sleep(_POLL)


def _identity(text: str, kind: str) -> None:
    from fabric._pki import Identity, PKIError

    got, sep, name = text.partition("/")
    if not sep or got != kind:
        raise ConfigError(f"bad identity {text!r}: expected {kind}/NAME")
    try:
        Identity(got, name)
    except PKIError as error:
        raise ConfigError(f"bad identity {text!r}: {error}") from error


def _rpc_text(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{code.name if code else 'error'}: {' '.join((details or '').split())}"
