"""The `fabric` command: certificates, start/stop, status, error reporting.

Commands run both as the installed console script (a real subprocess, as a user runs
them) and in-process through ``main(argv)``. Error messages are pinned exactly: they are
the interface a user reads. `status` is checked against an in-process head stand-in
served over real mutual TLS, so every failure mode can be staged. `start`, `status` and
`stop` against real head and agent processes are in test_cluster.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest
from cryptography import x509
from fabric.cli import main as cli_main
from fabric.cli._common import CommandError, format_table, parse_labels, parse_resources
from fabric.cli.main import build_parser, describe_error, main

from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric._tls import (
    PeerAuthenticator,
    RevocationList,
    auth_server_interceptor,
    server_credentials,
)

_BIN = Path(sys.executable).parent / "fabric"
FABRIC = str(_BIN) if _BIN.exists() else shutil.which("fabric")


def run_fabric(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `fabric` console script."""
    assert FABRIC is not None, "the fabric console script is not installed"
    return subprocess.run(
        [FABRIC, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``main(argv)`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- parsing


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _command_paths(build_parser())
    assert {p[0] for p in paths} >= {"certs", "start", "stop", "status"}
    assert {p for p in paths if p[0] == "certs"} >= {
        ("certs", "init"),
        ("certs", "issue"),
        ("certs", "revoke"),
        ("certs", "list"),
    }
    for path in [(), *paths]:
        code, out, err = cli(capsys, *path, "--help")
        assert code == 0, path
        assert out.startswith(f"usage: {' '.join(('fabric', *path))} "), out
        assert "--verbose" in out
        assert err == ""


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: fabric ")
    assert err.endswith("fabric: error: the following arguments are required: COMMAND\n")


def test_console_script_help() -> None:
    result = run_fabric("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fabric ")


def test_commands_are_registered_from_modules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new command is one module with register(); main() needs no other change."""
    module = types.ModuleType("fabric_cli_test_hello")

    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 7

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        from fabric.cli._common import add_command

        parser = add_command(subparsers, "hello", help="say hello", handler=hello)
        parser.add_argument("name")

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", [*cli_main.COMMAND_MODULES, module.__name__])
    assert cli(capsys, "hello", "world") == (7, "hello world\n", "")


def _register_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    module = types.ModuleType("fabric_cli_test_raise")

    def boom(args: argparse.Namespace) -> int:
        raise exc

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        from fabric.cli._common import add_command

        add_command(subparsers, "boom", help="fail", handler=boom)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", [module.__name__])


def test_os_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _register_raising(monkeypatch, PermissionError(13, "Permission denied", "/etc/x"))
    assert cli(capsys, "boom") == (1, "", "fabric: error: Permission denied: /etc/x\n")


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _register_raising(monkeypatch, ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        main(["boom"])


def test_describe_error() -> None:
    assert describe_error(CommandError("first\nsecond")) == "first"
    assert describe_error(FileNotFoundError(2, "No such file or directory", "x.pem")) == (
        "No such file or directory: x.pem"
    )
    assert describe_error(KeyError("k")) is None


def test_parse_resources() -> None:
    assert parse_resources("CPU=4,GPU=1") == {"CPU": 4.0, "GPU": 1.0}
    assert parse_resources(" CPU = 0.5 , memory=2e9 ") == {"CPU": 0.5, "memory": 2e9}
    assert parse_resources('{"CPU": 2, "GPU": 0}') == {"CPU": 2.0, "GPU": 0.0}
    assert parse_resources("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CPU", "bad --resources token 'CPU': expected KEY=VALUE"),
        ("CPU=4,GPU", "bad --resources token 'GPU': expected KEY=VALUE"),
        ("=4", "bad --resources token '=4': expected KEY=VALUE"),
        ("CPU=many", "bad --resources token 'CPU=many': the quantity must be a number >= 0"),
        ("CPU=-1", "bad --resources token 'CPU=-1': the quantity must be a number >= 0"),
        ("CPU=nan", "bad --resources token 'CPU=nan': the quantity must be a number >= 0"),
        ('{"CPU": true}', "bad --resources token 'CPU=True': the quantity must be a number >= 0"),
        ('{"CPU": 2', "bad --resources JSON: Expecting ',' delimiter: line 1 column 10 (char 9)"),
        ("[1]", "bad --resources token '[1]': expected KEY=VALUE"),
    ],
)
def test_parse_resources_errors(text: str, message: str) -> None:
    with pytest.raises(CommandError, match=f"^{re.escape(message)}$"):
        parse_resources(text)


def test_parse_labels() -> None:
    assert parse_labels("zone=a,tier=gold") == {"zone": "a", "tier": "gold"}
    assert parse_labels('{"zone": "a"}') == {"zone": "a"}
    with pytest.raises(CommandError, match=r"^bad --labels value for 'n': labels are strings$"):
        parse_labels('{"n": 1}')
    with pytest.raises(CommandError, match=r"^bad --labels token 'zone': expected KEY=VALUE$"):
        parse_labels("zone")


def test_format_table() -> None:
    table = format_table(("A", "NUM", "LAST"), [("x", "1", ""), ("long", "100", "end")], right={1})
    assert table.splitlines() == [
        "A     NUM  LAST",
        "x       1",
        "long  100  end",
    ]


# ----------------------------------------------------------------------------- certs


def test_certs_init_issue_revoke_list_via_console_script(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init = run_fabric("certs", "init", "--dir", ca_dir, "--trust-domain", "example.org")
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines()[0] == (
        f"created a certificate authority for trust domain example.org in {ca_dir}"
    )
    assert {p.name for p in ca_dir.iterdir()} >= {"ca.pem", "ca.key", "crl.pem"}
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600

    issue = run_fabric("certs", "issue", "--dir", ca_dir, "--tenant", "acme", "--days", "30")
    assert issue.returncode == 0, issue.stderr
    cert = ca_dir / "issued" / "tenant-acme.pem"
    lines = issue.stdout.splitlines()
    assert lines[:5] == [
        "identity  spiffe://example.org/tenant/acme",
        f"cert      {cert}",
        f"key       {ca_dir / 'issued' / 'tenant-acme.key'}",
        f"ca        {ca_dir / 'ca.pem'}",
        f"crl       {ca_dir / 'crl.pem'}",
    ]
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    lifetime = parsed.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)
    assert lines[5] == f"expires   {parsed.not_valid_after_utc:%Y-%m-%d %H:%M}"

    listed = run_fabric("certs", "list", "--dir", ca_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "CERTIFICATE             IDENTITY                          EXPIRES (UTC)     REVOKED",
        "issued/tenant-acme.pem  spiffe://example.org/tenant/acme  "
        f"{parsed.not_valid_after_utc:%Y-%m-%d %H:%M}  no",
    ]

    revoke = run_fabric("certs", "revoke", "--dir", ca_dir, cert)
    assert revoke.returncode == 0, revoke.stderr
    assert revoke.stdout == (
        f"revoked spiffe://example.org/tenant/acme (serial {parsed.serial_number:x})\n"
    )
    assert CertificateAuthority.load(ca_dir).revoked_serials() == {parsed.serial_number}
    listed = run_fabric("certs", "list", "--dir", ca_dir)
    assert listed.stdout.splitlines()[1].endswith("  yes")


def test_certs_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert cli(capsys, "certs", "init", "--dir", ca_dir)[0] == 0
    for who in (("--node", "head"), ("--node", "n1"), ("--operator", "admin")):
        code, out, err = cli(capsys, "certs", "issue", "--dir", ca_dir, *who)
        assert (code, err) == (0, "")
        kind = who[0].lstrip("-")
        assert out.splitlines()[0] == f"identity  spiffe://fabric.local/{kind}/{who[1]}"
    code, out, _ = cli(capsys, "certs", "list", "--dir", ca_dir)
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["issued/node-head.pem", "spiffe://fabric.local/node/head"],
        ["issued/node-n1.pem", "spiffe://fabric.local/node/n1"],
        ["issued/operator-admin.pem", "spiffe://fabric.local/operator/admin"],
    ]


def test_certs_issue_out_makes_a_host_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, host = tmp_path / "ca", tmp_path / "host1"
    cli(capsys, "certs", "init", "--dir", ca_dir)
    code, out, err = cli(capsys, "certs", "issue", "--dir", ca_dir, "--node", "n1", "--out", host)
    assert (code, err) == (0, "")
    assert out.splitlines()[1:5] == [
        f"cert      {host / 'issued' / 'node-n1.pem'}",
        f"key       {host / 'issued' / 'node-n1.key'}",
        f"ca        {host / 'ca.pem'}",
        f"crl       {host / 'crl.pem'}",
    ]
    # Laid out like a CA directory, without the CA key: what `fabric start --certs` takes.
    assert sorted(str(p.relative_to(host)) for p in host.rglob("*") if p.is_file()) == [
        "ca.pem",
        "crl.pem",
        "issued/node-n1.key",
        "issued/node-n1.pem",
    ]
    paths = CredentialPaths(
        cert=host / "issued" / "node-n1.pem",
        key=host / "issued" / "node-n1.key",
        ca=host / "ca.pem",
        crl=host / "crl.pem",
    )
    assert Credentials.load(paths).identity.uri == "spiffe://fabric.local/node/n1"

    # The CA still knows what it issued elsewhere: listed, and revocable by that copy.
    code, out, _ = cli(capsys, "certs", "list", "--dir", ca_dir)
    assert out.splitlines()[1].startswith("exported/node-n1.pem  spiffe://fabric.local/node/n1")
    assert (
        cli(capsys, "certs", "revoke", "--dir", ca_dir, ca_dir / "exported" / "node-n1.pem")[0] == 0
    )
    serial = x509.load_pem_x509_certificate(paths.cert.read_bytes()).serial_number
    assert CertificateAuthority.load(ca_dir).revoked_serials() == {serial}

    # A second identity into the same host directory is fine; another CA's is refused.
    assert cli(capsys, "certs", "issue", "--dir", ca_dir, "--tenant", "t", "--out", host)[0] == 0
    cli(capsys, "certs", "init", "--dir", tmp_path / "other")
    code, out, err = cli(
        capsys, "certs", "issue", "--dir", tmp_path / "other", "--node", "n2", "--out", host
    )
    assert (code, out) == (1, "")
    assert err == f"fabric: error: {host / 'ca.pem'} is the certificate of another CA\n"
    assert not (host / "issued" / "node-n2.pem").exists()


def test_certs_list_marks_expired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    now = dt.datetime.now(dt.UTC)
    ca.issue(
        "tenant",
        "old",
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    code, out, _ = cli(capsys, "certs", "list", "--dir", tmp_path / "ca")
    assert code == 0
    assert re.fullmatch(
        r"issued/tenant-old\.pem +spiffe://fabric\.local/tenant/old +"
        r"\d{4}-\d\d-\d\d \d\d:\d\d \(expired\) +no",
        out.splitlines()[1],
    )


def test_certs_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    code, out, _ = cli(capsys, "certs", "list", "--dir", tmp_path / "ca")
    assert (code, out) == (0, f"no certificates issued by the CA in {tmp_path / 'ca'}\n")


def test_certs_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    cli(capsys, "certs", "init", "--dir", ca_dir)
    cases: list[tuple[list[str | Path], str]] = [
        (
            ["certs", "init", "--dir", ca_dir],
            f"a certificate authority already exists in {ca_dir}",
        ),
        (
            ["certs", "init", "--dir", tmp_path / "x", "--trust-domain", "Bad.Domain"],
            "invalid trust domain 'Bad.Domain': expected lowercase letters, digits, "
            "'.', '-' and '_' (at most 255 characters)",
        ),
        (
            ["certs", "issue", "--dir", tmp_path / "none", "--tenant", "a"],
            f"no certificate authority in {tmp_path / 'none'} (missing ca.pem)",
        ),
        (
            ["certs", "issue", "--dir", ca_dir, "--tenant", "bad name"],
            "invalid identity name 'bad name': expected 1-63 characters of "
            "[A-Za-z0-9._-] starting with a letter or digit",
        ),
        (
            ["certs", "issue", "--dir", ca_dir, "--tenant", "a", "--days", "0"],
            "valid_days must be positive, got 0",
        ),
        (
            ["certs", "revoke", "--dir", ca_dir, tmp_path / "nope.pem"],
            f"missing certificate file: {tmp_path / 'nope.pem'}",
        ),
        (
            ["certs", "list", "--dir", tmp_path / "none"],
            f"no certificate authority in {tmp_path / 'none'} (missing ca.pem)",
        ),
    ]
    for argv, message in cases:
        assert cli(capsys, *argv) == (1, "", f"fabric: error: {message}\n"), argv


def test_revoking_a_foreign_certificate_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    other = CertificateAuthority.create(tmp_path / "other")
    foreign = other.issue("tenant", "x").cert
    result = run_fabric("certs", "revoke", "--dir", tmp_path / "ca", foreign)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"fabric: error: certificate {foreign} was not issued by this certificate authority\n"
    )


@pytest.mark.parametrize("position", ["before", "after"])
def test_verbose_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], position: str
) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    argv: list[str | Path] = ["certs", "init", "--dir", tmp_path / "ca"]
    argv = ["--verbose", *argv] if position == "before" else [*argv, "--verbose"]
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith("Traceback (most recent call last):\n")
    assert "fabric._pki.PKIError: a certificate authority already exists in" in err
    assert err.endswith(
        f"\nfabric: error: a certificate authority already exists in {tmp_path / 'ca'}\n"
    )


def test_without_verbose_there_is_no_traceback(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    result = run_fabric("certs", "init", "--dir", tmp_path / "ca")
    assert result.returncode == 1
    assert result.stderr == (
        f"fabric: error: a certificate authority already exists in {tmp_path / 'ca'}\n"
    )
    verbose = run_fabric("-v", "certs", "init", "--dir", tmp_path / "ca")
    assert "Traceback (most recent call last)" in verbose.stderr


# ----------------------------------------------------------------------------- status, staged


_NODES = [
    pb.NodeInfo(
        node_id="b",
        address="10.0.0.2:7000",
        region="eu-central",
        total={"CPU": 8, "GPU": 2, "memory": 16 * 2**30},
        available={"CPU": 5.5, "GPU": 2, "memory": 4 * 2**30},
        alive=True,
        labels={"zone": "b1"},
        running_tasks=2,
        queued_tasks=1,
        workers=3,
        identity="spiffe://fabric.local/node/b",
    ),
    pb.NodeInfo(
        node_id="a",
        address="10.0.0.1:7000",
        region="eu-west",
        total={"CPU": 4},
        available={"CPU": 4},
        alive=True,
        running_tasks=0,
        queued_tasks=0,
        workers=1,
        identity="spiffe://fabric.local/node/a",
    ),
    pb.NodeInfo(
        node_id="c",
        address="10.0.0.3:7000",
        region="us-east",
        total={"CPU": 2},
        available={"CPU": 0},
        alive=False,
        running_tasks=9,
        workers=9,
        identity="spiffe://fabric.local/node/c",
    ),
]


class _StagedHead(pb_grpc.HeadServicer):
    def __init__(self, nodes: list[pb.NodeInfo]) -> None:
        self.nodes = nodes

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ClusterInfo:
        return pb.ClusterInfo(nodes=self.nodes, version=1)


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.create(tmp_path / "ca")
    for kind, name in (("node", "head"), ("operator", "admin"), ("tenant", "acme")):
        ca.issue(kind, name)
    return ca


def _serve(
    paths: CredentialPaths, nodes: list[pb.NodeInfo], *, plaintext: bool = False
) -> tuple[grpc.Server, str]:
    """A head stand-in with the real authentication: operators and nodes may call Status."""
    creds = Credentials.load(paths)
    auth = PeerAuthenticator(creds, RevocationList(paths.crl, creds.ca_pem, check_interval=0))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[
            auth_server_interceptor(auth, {"/fabric.v1.Head/Status": frozenset({"operator"})})
        ],
    )
    pb_grpc.add_HeadServicer_to_server(_StagedHead(nodes), server)
    if plaintext:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def staged_head(pki: CertificateAuthority) -> Iterator[str]:
    server, address = _serve(_paths(pki.directory, "node", "head"), _NODES)
    yield address
    server.stop(None)


def _paths(certs: Path, kind: str, name: str) -> CredentialPaths:
    return CredentialPaths(
        cert=certs / "issued" / f"{kind}-{name}.pem",
        key=certs / "issued" / f"{kind}-{name}.key",
        ca=certs / "ca.pem",
        crl=certs / "crl.pem",
    )


def _status(
    capsys: pytest.CaptureFixture[str], address: str, certs: Path, identity: str, *extra: str
) -> tuple[int, str, str]:
    return cli(
        capsys, "status", "--address", address, "--certs", certs, "--identity", identity, *extra
    )


def test_status_table(
    pki: CertificateAuthority, staged_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _status(capsys, staged_head, pki.directory, "operator/admin")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "NODE   REGION      ADDRESS        ALIVE     CPU  GPU          memory"
        "  RUNNING  QUEUED  WORKERS  LABELS",
        "a      eu-west     10.0.0.1:7000  yes       4/4    -               -"
        "        0       0        1  -",
        "b      eu-central  10.0.0.2:7000  yes     5.5/8  2/2  4.0GiB/16.0GiB"
        "        2       1        3  zone=b1",
        "c      us-east     10.0.0.3:7000  no        0/2    -               -"
        "        9       0        9  -",
        # Totals are over the nodes that are alive.
        "TOTAL  3 nodes                    2/3    9.5/12  2/2  4.0GiB/16.0GiB"
        "        2       1        4",
    ]


def test_status_json(
    pki: CertificateAuthority, staged_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _status(capsys, staged_head, pki.directory, "operator/admin", "--json")
    assert code == 0
    data = json.loads(out)
    assert [n["node_id"] for n in data["nodes"]] == ["a", "b", "c"]
    assert data["nodes"][1] == {
        "node_id": "b",
        "address": "10.0.0.2:7000",
        "region": "eu-central",
        "alive": True,
        "identity": "spiffe://fabric.local/node/b",
        "total": {"CPU": 8.0, "GPU": 2.0, "memory": float(16 * 2**30)},
        "available": {"CPU": 5.5, "GPU": 2.0, "memory": float(4 * 2**30)},
        "labels": {"zone": "b1"},
        "running_tasks": 2,
        "queued_tasks": 1,
        "workers": 3,
        "tenants": {},
    }
    assert data["totals"] == {
        "nodes": 3,
        "alive": 2,
        "total": {"CPU": 12.0, "GPU": 2.0, "memory": float(16 * 2**30)},
        "available": {"CPU": 9.5, "GPU": 2.0, "memory": float(4 * 2**30)},
        "running_tasks": 2,
        "queued_tasks": 1,
        "workers": 4,
    }


def test_status_of_an_empty_fabric(
    pki: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    server, address = _serve(_paths(pki.directory, "node", "head"), [])
    try:
        code, out, _ = _status(capsys, address, pki.directory, "operator/admin")
    finally:
        server.stop(None)
    assert (code, out) == (0, f"no nodes have joined the head at {address}\n")


def test_status_nothing_listening(
    pki: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bound socket that never listens: connections to it are refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        code, out, err = _status(capsys, address, pki.directory, "operator/admin")
    assert (code, out) == (1, "")
    assert err == (
        f"fabric: error: cannot reach head at {address}: "
        "Failed to connect to remote host: Connection refused\n"
    )


def test_status_head_of_another_ca(
    tmp_path: Path, pki: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    server, address = _serve(other.issue("node", "head"), _NODES)
    try:
        result = run_fabric(
            "status", "--address", address, "--certs", pki.directory, "--identity", "operator/admin"
        )
    finally:
        server.stop(None)
    assert (result.returncode, result.stdout) == (1, "")
    # Exactly one line: grpc's own handshake log line is kept off stderr too.
    assert re.fullmatch(
        rf"fabric: error: TLS handshake with head at {re.escape(address)} failed: its "
        rf"certificate is not from the CA in {re.escape(str(pki.ca_path))} \([^\n]+\)\n",
        result.stderr,
    ), result.stderr


def test_status_plaintext_server(
    pki: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    server, address = _serve(_paths(pki.directory, "node", "head"), _NODES, plaintext=True)
    try:
        code, out, err = _status(capsys, address, pki.directory, "operator/admin")
    finally:
        server.stop(None)
    assert (code, out) == (1, "")
    assert (
        err
        == f"fabric: error: TLS handshake with head at {address} failed: it does not speak TLS\n"
    )


def test_status_identity_refused_by_the_head(
    pki: CertificateAuthority, staged_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = pki.directory / "issued" / "tenant-acme.pem"
    code, out, err = _status(capsys, staged_head, pki.directory, "tenant/acme")
    assert (code, out) == (1, "")
    assert err == (
        f"fabric: error: head at {staged_head} refused certificate {cert} "
        "(spiffe://fabric.local/tenant/acme): spiffe://fabric.local/tenant/acme "
        "is not allowed to call /fabric.v1.Head/Status\n"
    )


def test_status_certificate_revoked_at_the_head(
    tmp_path: Path, pki: CertificateAuthority, staged_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # This host's copy of the CRL predates the revocation: the head still refuses.
    client = tmp_path / "client"
    shutil.copytree(pki.directory, client, ignore=shutil.ignore_patterns("ca.key"))
    pki.revoke(pki.directory / "issued" / "operator-admin.pem")
    code, out, err = _status(capsys, staged_head, client, "operator/admin")
    assert (code, out) == (1, "")
    assert err == (
        f"fabric: error: head at {staged_head} refused certificate "
        f"{client / 'issued' / 'operator-admin.pem'} (spiffe://fabric.local/operator/admin): "
        "certificate revoked: spiffe://fabric.local/operator/admin\n"
    )


def test_status_certificate_problems_found_locally(
    tmp_path: Path, pki: CertificateAuthority, staged_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = pki.directory
    now = dt.datetime.now(dt.UTC)
    pki.issue(
        "operator",
        "old",
        not_before=now - dt.timedelta(days=9),
        not_after=now - dt.timedelta(days=2),
    )
    expired = x509.load_pem_x509_certificate((certs / "issued" / "operator-old.pem").read_bytes())
    pki.revoke(pki.issue("operator", "gone").cert)
    other = CertificateAuthority.create(tmp_path / "other")
    stranger = other.issue("operator", "stranger")
    shutil.copy(stranger.cert, certs / "issued")
    shutil.copy(stranger.key, certs / "issued")
    shutil.copy(certs / "issued" / "tenant-acme.key", certs / "issued" / "operator-mixed.key")
    shutil.copy(certs / "issued" / "operator-admin.pem", certs / "issued" / "operator-mixed.pem")

    cases = [
        (
            "operator/nobody",
            f"missing certificate file: {certs / 'issued' / 'operator-nobody.pem'}",
        ),
        ("admin", "bad --identity 'admin': expected KIND/NAME, e.g. operator/admin"),
        ("wizard/admin", "invalid identity kind 'wizard': expected one of node, operator, tenant"),
        (
            "operator/old",
            f"certificate {certs / 'issued' / 'operator-old.pem'} expired on "
            f"{expired.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        ),
        (
            "operator/gone",
            f"certificate {certs / 'issued' / 'operator-gone.pem'} is revoked "
            f"(listed in {certs / 'crl.pem'})",
        ),
        (
            "operator/stranger",
            f"certificate {certs / 'issued' / 'operator-stranger.pem'} was not issued by the "
            f"CA in {certs / 'ca.pem'}",
        ),
        (
            "operator/mixed",
            f"private key {certs / 'issued' / 'operator-mixed.key'} does not match certificate "
            f"{certs / 'issued' / 'operator-mixed.pem'}",
        ),
    ]
    for identity, message in cases:
        assert _status(capsys, staged_head, certs, identity) == (
            1,
            "",
            f"fabric: error: {message}\n",
        )

    (certs / "crl.pem").unlink()
    assert _status(capsys, staged_head, certs, "operator/admin") == (
        1,
        "",
        f"fabric: error: missing certificate file: {certs / 'crl.pem'}\n",
    )


# ----------------------------------------------------------------------------- start, input checks


def test_start_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    ca.issue("node", "n1")
    state = tmp_path / "state"
    common: list[str | Path] = ["--certs", tmp_path / "ca", "--state-dir", state]
    cases: list[tuple[list[str | Path], str]] = [
        (["--head", "--region", "eu"], "--region applies to an agent (--address), not to the head"),
        (
            ["--head", "--node-id", "x"],
            "--node-id applies to an agent (--address), not to the head",
        ),
        (["--address", "h:1"], "an agent needs --region"),
        (
            ["--address", "h:1", "--region", "eu", "--node-id", "n1", "--resources", "CPU:4"],
            "bad --resources token 'CPU:4': expected KEY=VALUE",
        ),
        (
            ["--address", "h:1", "--region", "eu", "--node-id", "n1", "--labels", "{"],
            "bad --labels JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            ["--address", "h:1", "--region", "eu", "--node-id", "bad/id"],
            "invalid identity name 'bad/id': expected 1-63 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit",
        ),
        (["--head"], f"missing certificate file: {tmp_path / 'ca' / 'issued' / 'node-head.pem'}"),
        (
            ["--address", "h:1", "--region", "eu", "--node-id", "n2"],
            f"missing certificate file: {tmp_path / 'ca' / 'issued' / 'node-n2.pem'}",
        ),
    ]
    for argv, message in cases:
        assert cli(capsys, "start", *argv, *common) == (1, "", f"fabric: error: {message}\n"), argv
    missing = tmp_path / "nowhere"
    assert cli(capsys, "start", "--head", "--certs", missing, "--state-dir", state) == (
        1,
        "",
        f"fabric: error: missing certificate file: {missing / 'ca.pem'}\n",
    )
    assert not (state / "processes").exists()


def test_stop_with_nothing_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "stop", "--state-dir", tmp_path)
    assert (code, out) == (
        0,
        f"nothing to stop: no processes recorded in {tmp_path / 'processes'}\n",
    )


def test_stop_forgets_a_stale_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A record whose pid is now some other process (here: this test) must not be signalled.
    records = tmp_path / "processes"
    records.mkdir()
    me = psutil.Process()
    (records / "head.json").write_text(
        json.dumps(
            {
                "name": "head",
                "role": "head",
                "pid": me.pid,
                "address": "127.0.0.1:1",
                "create_time": me.create_time() - 100,
                "log": "x",
            }
        )
    )
    (records / "agent-x.json").write_text("{not json")
    code, out, _ = cli(capsys, "stop", "--state-dir", tmp_path)
    assert code == 0
    assert sorted(out.splitlines()) == [
        f"head (pid {me.pid}) was not running",
        f"removed unreadable record {records / 'agent-x.json'}",
    ]
    assert list(records.iterdir()) == []


def test_stop_kills_a_process_ignoring_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fabric.cli._start import ProcessRecord, _write_record

    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ok', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"  # handler installed
        _write_record(
            tmp_path,
            ProcessRecord(
                "head", "head", proc.pid, "127.0.0.1:1", psutil.Process(proc.pid).create_time(), "x"
            ),
        )
        code, out, _ = cli(capsys, "stop", "--state-dir", tmp_path, "--timeout", "0.3")
        assert (code, out) == (
            0,
            f"killed head (pid {proc.pid}, 127.0.0.1:1): it did not stop within 0.3 s\n",
        )
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
