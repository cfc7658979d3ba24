"""``fabric audit``: the CLI against the head's audit service over real mutual TLS, and offline.

The service runs in-process (``tests/audit_server.py``); the commands run through
``fabric.cli.main.main`` except ``tail --follow``, which runs as its own process and is
stopped with Ctrl-C (SIGINT) as a user would.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import decode, encode_vkey
from fabric.cli.main import main as cli_main

from tests.audit_server import TIMEOUT, AuditServer, entry, make_ca
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Where `fabric start --head --state-dir <tmp>/fabric` keeps the head's state."""
    return tmp_path / "fabric" / "head"


@pytest.fixture
def server(certs: Path, state: Path) -> Iterator[AuditServer]:
    with AuditServer(certs, state) as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def head(server: AuditServer, identity: str = "operator/auditor") -> list[str]:
    return ["--address", server.address, "--certs", str(server.certs), "--identity", identity]


def fill(server: AuditServer) -> None:
    """Five entries: alice's task a (admit, place) and nested task b, and one of bob's."""
    a, b = "a" * 32, "b" * 32
    server.append(
        "n1",
        [
            entry("n1", 0, task=a, reasons=("fits on n1",)),
            entry("n1", 1, task=a, kind="place", outcome="place", rules=("place.local-fits",)),
            entry("n1", 2, tenant="bob", task="c" * 32, outcome="refuse"),
        ],
    )
    server.append(
        "n2",
        [
            entry("n2", 0, task=b, parent="n1/boot-1/1", reasons=("x" * 80,)),
            entry("n2", 1, task=b, kind="task.finish", outcome="ok", rules=()),
        ],
    )


# --- reading ------------------------------------------------------------------------------


def test_query_prints_a_table_json_or_json_lines(
    server: AuditServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(server)
    code, out, _ = run(capsys, "audit", "query", *head(server))
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(
        r"SEQ +TIME +KIND +TENANT +OUTCOME +RULES +TASK/ACTOR +NODE +REASONS", lines[0]
    )
    assert re.fullmatch(
        r"  1  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  place +alice +place +place\.local-fits +a{32} +n1"
        r" +reason 1",
        lines[2],
    )
    assert lines[4].endswith("x" * 59 + "…")  # reasons are cut short in the table
    assert len(lines) == 6
    code, out, _ = run(
        capsys, "audit", "query", "--format", "json", "--kind", "admit", *head(server)
    )
    assert code == 0
    assert [(e["seq"], e["id"]) for e in json.loads(out)] == [
        (0, "n1/boot-1/0"),
        (2, "n1/boot-1/2"),
        (3, "n2/boot-1/0"),
    ]
    # A tenant sees its own entries, whatever it asks for.
    code, out, _ = run(
        capsys,
        "audit",
        "query",
        "--format",
        "jsonl",
        "--tenant",
        "bob",
        *head(server, "tenant/alice"),
    )
    assert code == 0
    # JSON lines are the entries' canonical bytes, which decode() alone accepts.
    assert [decode(line.encode()).seq for line in out.splitlines()] == [0, 1, 3, 4]
    code, out, _ = run(capsys, "audit", "query", "--limit", "1", "--since", "1d", *head(server))
    assert code == 0 and len(out.splitlines()) == 2
    code, out, _ = run(capsys, "audit", "query", "--until", "2020-01-01", *head(server))
    assert code == 0 and len(out.splitlines()) == 1


def test_explain_indents_each_entry_under_the_one_it_follows_from(
    server: AuditServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(server)
    code, out, _ = run(capsys, "audit", "explain", "b" * 32, *head(server))
    assert code == 0
    headers = [line for line in out.splitlines() if line.lstrip().startswith("#")]
    assert [re.sub(r"  \(.*\)$", "", line) for line in headers] == [
        "#0 admit: place",
        "#1 place: place",
        "    #3 admit: place",
        "    #4 task.finish: ok",
    ]
    assert "        parent: n1/boot-1/1\n        id: n2/boot-1/0\n" in out
    code, out, _ = run(capsys, "audit", "explain", "b" * 32, *head(server, "tenant/bob"))
    assert (code, out) == (0, f"no entries about task {'b' * 32} that you may see\n")


def test_tail_prints_the_last_entries_that_match(
    server: AuditServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.append("n1", [entry("n1", 0, tenant="bob")])
    server.append("n1", [entry("n1", i) for i in range(1, 60)])
    code, out, _ = run(capsys, "audit", "tail", "-n", "2", "--format", "jsonl", *head(server))
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [58, 59]
    # bob's one entry is far back: the window widens until it is found.
    code, out, _ = run(
        capsys, "audit", "tail", "--tenant", "bob", "--format", "json", *head(server)
    )
    assert code == 0
    assert [e["id"] for e in json.loads(out)] == ["n1/boot-1/0"]


def _read_line(stream: int, buffer: bytearray, deadline: float) -> str:
    """The next line from the pipe `stream`, waiting at most until `deadline`."""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no line within the deadline; got so far: {bytes(buffer)!r}")
        chunk = os.read(stream, 65536)
        if not chunk:
            raise AssertionError(f"the process ended; got so far: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def test_tail_follow_prints_new_entries_until_interrupted(server: AuditServer) -> None:
    server.append("n1", [entry("n1", 0), entry("n1", 1)])
    command = [sys.executable, "-m", "fabric.cli.main", "audit", "tail", "--follow", "-n", "1"]
    process = subprocess.Popen(
        [*command, "--format", "jsonl", *head(server, "tenant/alice")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    deadline, buffer = time.monotonic() + TIMEOUT, bytearray()
    try:
        assert json.loads(_read_line(process.stdout.fileno(), buffer, deadline))["seq"] == 1
        wait_for(lambda: server.audit.followers_waiting == 1, TIMEOUT, "the tail to follow")
        server.append("n2", [entry("n2", 0, tenant="bob"), entry("n2", 1)])
        line = _read_line(process.stdout.fileno(), buffer, deadline)
        assert json.loads(line)["id"] == "n2/boot-1/1"  # bob's is not alice's to see
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()


# --- proofs -------------------------------------------------------------------------------


def test_a_proof_checks_offline_with_the_verifier_key_file(
    server: AuditServer, capsys: pytest.CaptureFixture[str], state: Path, tmp_path: Path
) -> None:
    fill(server)
    bundle = tmp_path / "entry-3.json"
    code, _, err = run(capsys, "audit", "prove", "3", "--out", bundle, *head(server))
    assert (code, err) == (0, f"wrote the proof of entry 3 to {bundle}\n")
    vkey = state / "audit.vkey"
    # The head is not asked: only the bundle and the key.
    code, out, _ = run(capsys, "audit", "check-proof", bundle, "--vkey", vkey)
    assert code == 0
    first, _, rest = out.partition("\n")
    assert first == (
        "verified: entry 3 is in log fabric.local/audit, under its checkpoint of 5 entries "
        "signed by fabric-audit"
    )
    assert json.loads(rest)["id"] == "n2/boot-1/0"
    # The same, with the key given as text and the log named.
    code, _, _ = run(
        capsys,
        "audit",
        "check-proof",
        bundle,
        "--vkey",
        vkey.read_text().strip(),
        "--origin",
        "fabric.local/audit",
    )
    assert code == 0


def test_a_bundle_moved_to_another_seq_or_checked_with_another_key_fails(
    server: AuditServer, capsys: pytest.CaptureFixture[str], state: Path, tmp_path: Path
) -> None:
    fill(server)
    code, out, _ = run(capsys, "audit", "prove", "1", *head(server))
    assert code == 0
    moved = tmp_path / "moved.json"
    moved.write_text(out.strip().replace('"seq":1,', '"seq":2,'))
    code, _, err = run(capsys, "audit", "check-proof", moved, "--vkey", state / "audit.vkey")
    assert code == 1
    assert err == (
        f"fabric: error: {moved}: the proof does not verify: step (5): the entry is at seq 1, "
        "the proof for 2\n"
    )
    other = encode_vkey("fabric-audit", Ed25519PrivateKey.generate().public_key())
    genuine = tmp_path / "genuine.json"
    genuine.write_text(out)
    code, _, err = run(capsys, "audit", "check-proof", genuine, "--vkey", other)
    assert code == 1
    assert "the proof does not verify: step (2): the bundle is for verifier key" in err
    # A tenant cannot prove another tenant's entry, nor learn whether it exists.
    code, _, err = run(capsys, "audit", "prove", "2", *head(server, "tenant/alice"))
    assert (code, err) == (
        1,
        "fabric: error: audit prove: the audit log has no entry 2 you may see\n",
    )


# --- verify -------------------------------------------------------------------------------


def test_verify_of_the_state_dir_names_a_flipped_entry(
    server: AuditServer, capsys: pytest.CaptureFixture[str], state: Path, tmp_path: Path
) -> None:
    fill(server)
    last_seen = tmp_path / "last-seen"
    local = ["audit", "verify", "--state-dir", state, "--last-seen", last_seen]
    # The --state-dir of `fabric start` will do too.
    code, out, _ = run(
        capsys, "audit", "verify", "--state-dir", state.parent, "--last-seen", last_seen
    )
    assert code == 0
    assert out == (
        f"{state / 'audit.db'}: ok: 5 entries, 0 of them past the last checkpoint\n"
        f"saved the newest checkpoint in {last_seen}\n"
    )
    saved = last_seen.read_text()
    # An attacker with write access to the head's disk edits one entry's reasons.
    with sqlite3.connect(state / "audit.db") as db:
        (data,) = db.execute("SELECT data FROM entries WHERE seq = 3").fetchone()
        db.execute("UPDATE entries SET data = ? WHERE seq = 3", (data.replace(b"xxx", b"xyx"),))
    db.close()
    code, out, err = run(capsys, *local)
    assert code == 1
    assert out.startswith("flipped at seq 3: not the entry the checkpoint signed for 5 entries")
    assert err == (
        f"fabric: error: {state / 'audit.db'} does not verify (1 problem); {last_seen} is "
        "unchanged\n"
    )
    assert last_seen.read_text() == saved


def test_remote_verify_detects_a_rollback_then_a_fork(
    certs: Path, capsys: pytest.CaptureFixture[str], state: Path, tmp_path: Path
) -> None:
    last_seen = tmp_path / "last-seen"
    vkey = tmp_path / "audit.vkey"  # the verifier's own copy of the key
    older = tmp_path / "older.db"

    def remote(server: AuditServer) -> tuple[int, str, str]:
        args = ["audit", "verify", *head(server), "--vkey", vkey, "--last-seen", last_seen]
        return run(capsys, *args)

    with AuditServer(certs, state) as server:
        shutil.copy(state / "audit.vkey", vkey)
        server.append("n1", [entry("n1", i) for i in range(3)])
        code, out, _ = remote(server)
        assert (code, out.splitlines()[0]) == (
            0,
            "ok: the head's checkpoint of 3 entries verifies with fabric-audit (no checkpoint "
            "seen before to compare with)",
        )
    shutil.copy(state / "audit.db", older)  # closed: the WAL is folded into the file
    with AuditServer(certs, state) as server:
        server.append("n1", [entry("n1", i) for i in range(3, 6)])
        code, out, _ = remote(server)
        assert (code, out.splitlines()[0]) == (
            0,
            "ok: the head's checkpoint of 6 entries verifies with fabric-audit and extends the "
            "one of 3 entries you saw last",
        )
    saved = last_seen.read_text()
    # The head's disk is put back to the older copy, and the head restarted on it.
    shutil.copy(older, state / "audit.db")
    with AuditServer(certs, state) as server:
        code, out, err = remote(server)
        assert code == 1
        assert out == (
            "rollback: the head's newest checkpoint is for 3 entries; the one you saw last is "
            "signed for 6\n"
        )
        assert err.startswith(f"fabric: error: the audit log of the head at {server.address} ")
        assert last_seen.read_text() == saved
        # The local check of the store sees the same with the same last-seen checkpoint.
        local = ["audit", "verify", "--state-dir", state, "--last-seen", last_seen]
        code, out, _ = run(capsys, *local, "--vkey", vkey)
        assert code == 1 and out.startswith("rollback at seq 3: the store holds 3 entries")
        # Then it appends other entries past the old size: a fork.
        server.append("n2", [entry("n2", i) for i in range(4)])
        code, out, _ = remote(server)
        assert code == 1
        assert out.startswith(
            "forked: the head's log of 7 entries does not extend the one of 6 you saw last"
        )
    assert last_seen.read_text() == saved


# --- errors -------------------------------------------------------------------------------


def test_errors_are_one_line(
    server: AuditServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    args = ["--address", nowhere, "--certs", str(server.certs)]
    code, _, err = run(capsys, "audit", "query", *args)
    assert code == 1
    assert err.startswith(f"fabric: error: cannot reach head at {nowhere}: ")
    code, _, err = run(capsys, "audit", "query", *head(server, "node/n1"))
    assert code == 1
    assert err.startswith(f"fabric: error: head at {server.address} refused certificate ")
    assert err.endswith("is not allowed to call /fabric.v1.Head/QueryAudit\n")
    code, _, err = run(capsys, "audit", "verify", *head(server))
    assert (code, err) == (1, "fabric: error: verify --address needs --certs and --vkey\n")
    code, _, err = run(capsys, "audit", "verify", "--state-dir", tmp_path)
    assert (code, err) == (1, f"fabric: error: no audit log at {tmp_path / 'audit.db'}\n")
    code, _, err = run(capsys, "audit", "check-proof", tmp_path / "x.json", "--vkey", "nokey")
    assert (code, err) == (
        1,
        "fabric: error: --vkey 'nokey': no such file, and not a verifier key\n",
    )
    code, _, err = run(capsys, "audit", "query", "--since", "last tuesday", *head(server))
    assert code == 1
    assert err.startswith("fabric: error: bad --since 'last tuesday': expected ISO 8601")
