"""Drivers on the agent's own host: the same session protocol over mutual TLS on a Unix
socket instead of HTTP/2, which costs a fraction of a gRPC stream's per-message time.

Identity still comes from the client certificate, checked by the same authenticator as
every gRPC call (CA, revocation, expiry, kind); only the carrier changes. Frames are a
4-byte little-endian length and a `ClientBatch` or `ServerBatch`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import struct
from pathlib import Path

import grpc

from fabric._agent.node import NodeAgent
from fabric._agent.sessions import REAUTH_INTERVAL, DriverSession
from fabric._pki import CredentialPaths
from fabric._proto import fabric_pb2 as pb
from fabric._tls import MAX_MESSAGE_BYTES, PeerAuthenticationError, PeerAuthenticator

log = logging.getLogger(__name__)

FRAME = struct.Struct("<I")


def server_context(paths: CredentialPaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.cert, paths.key)
    context.load_verify_locations(cafile=str(paths.ca))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no session
    return context


async def serve_local(
    node: NodeAgent, auth: PeerAuthenticator, path: Path, paths: CredentialPaths
) -> asyncio.Server:
    context = server_context(paths)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        auth_context = {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()] if der else []}
        try:
            identity = auth.authenticate(auth_context)
            if identity.kind != "tenant":
                raise PeerAuthenticationError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{identity.uri} may not open a driver session",
                )
        except PeerAuthenticationError as e:
            log.warning("refused a local session: %s", e.message)
            writer.close()
            return

        def send_batch(batch: pb.ServerBatch) -> None:
            data = batch.SerializeToString()
            if not writer.is_closing():
                writer.write(FRAME.pack(len(data)) + data)

        session = DriverSession(node, identity, send_batch, hashlib.sha256(der or b"").hexdigest())

        async def recheck() -> None:
            while True:
                await asyncio.sleep(REAUTH_INTERVAL)
                try:
                    auth.authenticate(auth_context)
                except PeerAuthenticationError as e:
                    log.warning("ending the session of %s: %s", identity.uri, e.message)
                    # Say why before hanging up (gRPC would carry it as the call's status).
                    why = pb.ErrorInfo(
                        kind=pb.ErrorInfo.SYSTEM, message=f"{e.code.name}: {e.message}"
                    )
                    send_batch(
                        pb.ServerBatch(messages=[pb.ServerMessage(reply=pb.Reply(error=why))])
                    )
                    writer.close()
                    return

        watchdog = asyncio.get_running_loop().create_task(recheck())
        try:
            while True:
                (length,) = FRAME.unpack(await reader.readexactly(4))
                if length > MAX_MESSAGE_BYTES:
                    log.warning("%s sent a %d-byte frame; closing", identity.uri, length)
                    return
                batch = pb.ClientBatch()
                batch.ParseFromString(await reader.readexactly(length))
                if not session.receive(batch):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        except Exception:
            log.exception("malformed input from %s; closing its session", identity.uri)
        finally:
            watchdog.cancel()
            session.close()
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path), ssl=context, limit=1 << 20)
    path.chmod(0o666)  # anyone may knock; only a tenant certificate gets a session
    return server
