"""A driver's session with the agent, whatever carries it (gRPC or the local channel)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fabric._agent.batching import Batcher
from fabric._agent.durability import answer_acts
from fabric._agent.node import NodeAgent
from fabric._agent.state import Session
from fabric._pki import Identity
from fabric._proto import fabric_pb2 as pb

log = logging.getLogger(__name__)

REAUTH_INTERVAL = 1.0  # seconds between certificate re-checks of an open session


class DriverSession:
    """Feeds one driver's batches to the node and batches what goes back to it. The first
    message must be `hello`; the tenant is the certificate's, never a field it sends."""

    def __init__(
        self,
        node: NodeAgent,
        identity: Identity,
        send_batch: Callable[[pb.ServerBatch], None],
        fingerprint: str = "",
    ) -> None:
        self.node = node
        self.identity = identity
        self.fingerprint = fingerprint  # of its certificate: the audit log's subject
        self.batcher = Batcher(lambda ms: pb.ServerBatch(messages=ms), send_batch, answer_acts)
        self.session: Session | None = None

    def receive(self, batch: pb.ClientBatch) -> bool:
        """Handle a batch; False when the session must end."""
        node = self.node
        for message in batch.messages:
            if self.session is None:
                if message.WhichOneof("body") != "hello":
                    log.warning("session from %s did not start with hello", self.identity.uri)
                    return False
                tenant = node.policy.tenant_of(f"{self.identity.kind}/{self.identity.name}")
                if tenant is None:
                    log.warning(
                        "refusing a session of %s: not a tenant of policy %s",
                        self.identity.uri,
                        node.policy.version,
                    )
                    error = pb.ErrorInfo(
                        kind=pb.ErrorInfo.INVALID_REQUEST,
                        message=f"{self.identity.uri} is not a tenant of the policy in force "
                        f"(version {node.policy.version}) [rule tenant.unknown]",
                    )
                    if node.recorder is not None:
                        node.recorder.event(
                            kind="cert.refuse",
                            tenant="",
                            outcome="refuse",
                            rules=("tenant.unknown",),
                            reasons=(error.message,),
                            policy=node.policy.version,
                        )
                    self.batcher.send(
                        pb.ServerMessage(request_id=message.request_id, reply=pb.Reply(error=error))
                    )
                    self.batcher.flush()
                    return False
                self.session = node.open_session(
                    tenant.name,
                    message.hello.namespace,
                    self.identity.uri,
                    self.batcher.send,
                )
                self.session.fingerprint = self.fingerprint
                welcome = node.welcome(self.session)
                self.batcher.send(
                    pb.ServerMessage(request_id=message.request_id, reply=pb.Reply(welcome=welcome))
                )
                continue
            try:
                node.handle_client(self.session, message)
            except Exception:
                log.exception("error handling a message from %s", self.identity.uri)
        return True

    def close(self) -> None:
        if self.session is not None:
            self.node.close_session(self.session)
