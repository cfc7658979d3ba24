"""Tests for tests/netns.py: several hosts on one machine with real cross-host TCP.

Tests that need namespaces skip (with the reason) where they cannot be created;
the availability and skip logic itself is tested everywhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.netns import (
    Host,
    NetnsError,
    NetnsUnavailable,
    Topology,
    require_netns,
    wait_until,
)

# Importing a fixture: the redundant alias marks it as deliberately re-exported,
# so linters do not flag it as unused or as redefined by test parameters.
from tests.netns import topology3 as topology3

REPO_ROOT = Path(__file__).resolve().parents[1]
ECHO_PORT = 7707  # every namespace has its own port space, so a fixed port is safe

# A threaded TCP echo server: argv = address port.
ECHO_SERVER = r"""
import socketserver, sys

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

with Server((sys.argv[1], int(sys.argv[2])), Echo) as server:
    server.serve_forever()
"""

# Connects (retrying until the deadline while the server is not accepting yet),
# sends the payload, prints what comes back.  argv = address port payload
# deadline_s attempt_timeout_s; deadline 0 means a single attempt.
ECHO_CLIENT = r"""
import socket, sys, time

address, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
deadline = time.monotonic() + float(sys.argv[4])
attempt_timeout = float(sys.argv[5])
while True:
    try:
        with socket.create_connection((address, port), timeout=attempt_timeout) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        sys.stdout.write(b"".join(chunks).decode())
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() >= deadline:
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
            sys.exit(1)
        time.sleep(0.05)
"""


def echo_from(
    topo: Topology,
    host: Host,
    address: str,
    port: int,
    payload: str,
    *,
    deadline: float = 15.0,
    attempt_timeout: float = 2.0,
) -> subprocess.CompletedProcess[str]:
    """Run the echo client inside ``host`` against ``address:port``."""
    argv = [sys.executable, "-c", ECHO_CLIENT, address, str(port), payload]
    argv += [str(deadline), str(attempt_timeout)]
    result: subprocess.CompletedProcess[str] = topo.run(
        host, argv, capture_output=True, text=True, timeout=deadline + attempt_timeout + 30
    )
    return result


def start_echo_server(topo: Topology, host: Host) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = topo.popen(
        host,
        [sys.executable, "-c", ECHO_SERVER, host.address, str(ECHO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def assert_echo(
    topo: Topology, client: Host, address: str, port: int, server: subprocess.Popen[str] | None
) -> None:
    payload = f"hello from {client.name} to {address}:{port}"
    result = echo_from(topo, client, address, port, payload)
    if result.returncode != 0 and server is not None and server.poll() is not None:
        _, server_err = server.communicate()
        pytest.fail(f"echo server exited with {server.returncode}: {server_err}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


@pytest.fixture
def root_echo_server(topology3: Topology) -> Iterator[tuple[str, int]]:
    """A TCP echo server in the root namespace, bound to the bridge address."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

    with Server((topology3.bridge_address, 0), Echo) as server:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield topology3.bridge_address, server.server_address[1]
        finally:
            server.shutdown()
            thread.join(timeout=10)


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["ip", "-j", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    data = json.loads(out) if out else []
    assert isinstance(data, list)
    return data


def namespace_names() -> set[str]:
    return {str(entry["name"]) for entry in ip_json("netns", "list")}


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Read one line from ``proc``'s stdout, failing after ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line from pid {proc.pid} within {timeout}s; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"pid {proc.pid} closed stdout; got {buf!r}")
            buf += chunk
    return buf.split(b"\n", 1)[0]


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def spawn_topology_owner(prefix: str, then: str) -> subprocess.Popen[bytes]:
    """A separate process that builds a topology, starts ``sleep`` in a host, prints
    what it created as JSON, then runs ``then``."""
    code = (
        "import json, subprocess, sys\n"
        "from tests.netns import Topology\n"
        f"topo = Topology(2, prefix={prefix!r})\n"
        "sleeper = topo.popen(topo.hosts[1], ['sleep', '600'], stdin=subprocess.DEVNULL,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "names = {'namespaces': [h.name for h in topo.hosts],\n"
        "         'links': [topo._names.bridge] + [topo._names.veth(i) for i in range(2)],\n"
        "         'sleeper': sleeper.pid}\n"
        "print(json.dumps(names), flush=True)\n"
        f"{then}\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# --------------------------------------------------------------------------- availability


def test_probe_gives_none_or_a_reason() -> None:
    reason = netns.netns_unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)
    assert netns.netns_unavailable_reason() is reason  # cached
    print(f"netns available: {reason is None} ({reason})")


def test_require_netns_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "netns_unavailable_reason", lambda: "no CAP_NET_ADMIN here")
    with pytest.raises(pytest.skip.Exception, match="no CAP_NET_ADMIN here"):
        require_netns()


def test_topology_raises_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "netns_unavailable_reason", lambda: "not root")
    with pytest.raises(NetnsUnavailable, match="not root") as info:
        Topology(2)
    assert info.value.reason == "not root"


def test_probe_reasons_without_ip_binary_or_when_disabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(netns.DISABLE_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = netns._probe()
    assert reason is not None and "ip" in reason

    monkeypatch.setenv(netns.DISABLE_ENV, "1")
    reason = netns._probe()
    assert reason is not None and netns.DISABLE_ENV in reason


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Topology(0)
    with pytest.raises(ValueError):
        Topology(2, prefix="Bad-Prefix")


# --------------------------------------------------------------------------- real topologies


def test_topology_layout(topology3: Topology) -> None:
    topo = topology3
    subnet = ipaddress.IPv4Network(f"{topo.bridge_address}/24", strict=False)
    assert subnet == topo.subnet
    assert subnet.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
    assert topo.bridge_address == str(subnet.network_address + 1)
    assert [h.address for h in topo.hosts] == [
        str(subnet.network_address + 10 + i) for i in range(3)
    ]
    assert len({h.name for h in topo.hosts}) == 3
    assert {h.name for h in topo.hosts} <= namespace_names()
    for host in topo.hosts:
        assert str(os.getpid()) in host.name
        # Only the subnet itself and kernel-local entries: nothing is routed elsewhere.
        for route in ip_json("-n", host.name, "-4", "route", "show", "table", "all"):
            dst = ipaddress.IPv4Network(
                str(route["dst"]).replace("default", "0.0.0.0/0"), strict=False
            )
            assert dst.subnet_of(subnet) or dst.is_loopback, route
        for route in ip_json("-n", host.name, "-6", "route", "show", "table", "all"):
            dst6 = ipaddress.IPv6Network(str(route["dst"]).replace("default", "::/0"))
            assert dst6.is_loopback or dst6 == ipaddress.IPv6Network("ff00::/8"), route
        addrs = {
            (ifc["ifname"], info["local"])
            for ifc in ip_json("-n", host.name, "addr", "show")
            for info in ifc.get("addr_info", [])
        }
        assert ("eth0", host.address) in addrs
        assert {a for _, a in addrs} <= {host.address, "127.0.0.1", "::1"}, addrs


def test_cross_host_echo(topology3: Topology) -> None:
    topo = topology3
    server_host, client_host, third_host = topo.hosts
    server = start_echo_server(topo, server_host)
    # The client retries until the server accepts, within its deadline.
    assert_echo(topo, client_host, server_host.address, ECHO_PORT, server)
    assert_echo(topo, third_host, server_host.address, ECHO_PORT, server)
    assert server.poll() is None


def test_every_host_reaches_the_head_on_the_bridge(
    topology3: Topology, root_echo_server: tuple[str, int]
) -> None:
    address, port = root_echo_server
    for host in topology3.hosts:
        assert_echo(topology3, host, address, port, None)


def test_link_down_partitions_a_host_and_link_up_heals_it(
    topology3: Topology, root_echo_server: tuple[str, int]
) -> None:
    topo = topology3
    host1, host2, host3 = topo.hosts
    server = start_echo_server(topo, host1)
    assert_echo(topo, host2, host1.address, ECHO_PORT, server)

    topo.link_down(host1)
    cut = echo_from(topo, host2, host1.address, ECHO_PORT, "lost", deadline=0, attempt_timeout=1)
    assert cut.returncode != 0, cut.stdout
    print(f"while {host1.name} is cut off: {cut.stderr.strip()}")
    assert "timed out" in cut.stderr or "unreachable" in cut.stderr.lower(), cut.stderr
    # Only host1 is cut off: the others still reach each other and the head.
    bridge_address, bridge_port = root_echo_server
    assert_echo(topo, host2, bridge_address, bridge_port, None)
    server3 = start_echo_server(topo, host3)
    assert_echo(topo, host2, host3.address, ECHO_PORT, server3)

    topo.link_up(host1)
    assert_echo(topo, host2, host1.address, ECHO_PORT, server)
    assert server.poll() is None


def test_topologies_are_isolated_from_each_other() -> None:
    require_netns()
    with Topology(1) as first, Topology(1) as second:
        assert first.subnet != second.subnet
        assert not first.subnet.overlaps(second.subnet)
        server = start_echo_server(second, second.hosts[0])
        assert_echo(second, second.hosts[0], second.hosts[0].address, ECHO_PORT, server)
        other = second.hosts[0].address
        result = echo_from(first, first.hosts[0], other, ECHO_PORT, "x", deadline=0)
        assert result.returncode != 0
        assert "unreachable" in result.stderr.lower(), result.stderr


def test_close_kills_processes_and_removes_everything() -> None:
    require_netns()
    topo = Topology(2)
    names = [h.name for h in topo.hosts]
    links = [topo._names.bridge] + [topo._names.veth(i) for i in range(2)]
    assert set(names) <= namespace_names()
    assert all(link_exists(link) for link in links)

    tracked = topo.popen(topo.hosts[0], ["sleep", "600"])
    # Started behind the topology's back, yet inside one of its namespaces.
    untracked = subprocess.Popen(topo.command(topo.hosts[1], ["sleep", "600"]))
    try:
        wait_until(
            lambda: len(netns._namespace_pids(names[1])) == 1,
            timeout=15,
            what="the untracked process to enter its namespace",
        )
        topo.close()
        assert tracked.poll() is not None
        assert untracked.wait(timeout=15) == -signal.SIGKILL
    finally:
        for proc in (tracked, untracked):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert not set(names) & namespace_names()
    assert not [link for link in links if link_exists(link)]
    topo.close()  # idempotent
    assert topo.closed
    with pytest.raises(NetnsError):
        topo.popen(topo.hosts[0], ["true"])


def test_crashed_process_cleans_up_at_exit() -> None:
    require_netns()
    owner = spawn_topology_owner("fabx", "raise SystemExit('crash')")
    out, err = owner.communicate(timeout=120)
    assert owner.returncode == 1, err
    created = json.loads(out.decode().splitlines()[0])
    assert not set(created["namespaces"]) & namespace_names()
    assert not [link for link in created["links"] if link_exists(link)]
    assert process_gone(created["sleeper"])


def test_killed_process_leftovers_are_removed_by_the_next_topology() -> None:
    require_netns()
    # A prefix of this run's own, so that a concurrent run of this test does not
    # clean up our leftovers before we look at them.
    prefix = "k" + netns._b36(os.getpid() % 36**3)
    owner = spawn_topology_owner(prefix, "sys.stdin.read()")
    try:
        created = json.loads(read_line(owner, timeout=120))
    finally:
        owner.kill()  # SIGKILL: no atexit, everything is left behind
        owner.communicate(timeout=30)
    assert set(created["namespaces"]) <= namespace_names()
    assert all(link_exists(link) for link in created["links"])
    assert not process_gone(created["sleeper"])  # orphaned, still in its namespace

    with Topology(1, prefix=prefix) as topo:
        assert not set(created["namespaces"]) & namespace_names()
        assert not [link for link in created["links"] if link_exists(link)]
        assert process_gone(created["sleeper"])
        assert topo.hosts[0].name in namespace_names()
