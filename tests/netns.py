"""Multi-host test topologies built from Linux network namespaces.

A :class:`Topology` turns one machine into several "hosts": each host is a
network namespace with its own IPv4 address, attached through a veth pair to a
bridge in the root namespace.  The bridge itself carries ``<subnet>.1``, so a
head process running in the root namespace is reachable from every host at
:attr:`Topology.bridge_address`, and traffic between hosts crosses real network
interfaces.

Containment: every topology uses its own ``10.213.<k>.0/24`` subnet (``k`` is
derived from the pid and moved on if the subnet is already in use).  The hosts
get no default route and no IPv6 addresses beyond loopback, so they can reach
only each other and the bridge address; nothing is routed beyond the subnet
(the root namespace's own forwarding setting is left untouched).

Where namespaces cannot be created (not root, no ``ip`` binary, no
CAP_NET_ADMIN, a container without netns support) :func:`require_netns` and
the fixtures made by :func:`netns_topology` skip the test with the reason.
Setting ``FABRIC_DISABLE_NETNS=1`` forces that skip.

Typical use::

    from tests.netns import Topology, require_netns
    from tests.netns import topology3 as topology3  # alias: a deliberate re-export

    def test_something(topology3: Topology) -> None:
        server, client = topology3.hosts[0], topology3.hosts[1]
        proc = topology3.popen(server, [sys.executable, "-m", "my_server", server.address])
        ...

    def test_other() -> None:
        require_netns()
        with Topology(5) as topo:
            ...

Everything a topology creates is named ``<prefix>-<pid>-...`` (namespaces) or
labelled with the owning pid (links), and is removed by :meth:`Topology.close`,
by the context manager, at interpreter exit, or -- if the owning process was
killed outright -- by the next topology created with the same prefix.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "Host",
    "NetnsError",
    "NetnsUnavailable",
    "Topology",
    "netns_topology",
    "netns_unavailable_reason",
    "require_netns",
    "topology3",
    "wait_until",
]

DISABLE_ENV = "FABRIC_DISABLE_NETNS"
"""Environment variable that, when set to anything but ``""``/``"0"``, disables netns tests."""

SUBNET_BASE = "10.213"
"""Topologies use ``10.213.<k>.0/24`` subnets, an unusual range unlikely to be routed here."""

HOST_ADDRESS_OFFSET = 10
"""``hosts[i]`` gets ``<subnet>.(10 + i)``; the bridge in the root namespace gets ``<subnet>.1``."""

MAX_HOSTS = 200

_IFACE_IN_NS = "eth0"
_ALIAS_TAG = "fabric-netns"
_ALIAS_RE = re.compile(rf"^{_ALIAS_TAG} prefix=(?P<prefix>\S+) pid=(?P<pid>\d+)$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
_IFNAMSIZ = 15  # longest Linux interface name
_IP_TIMEOUT = 30.0  # one ip(8) invocation
_READY_TIMEOUT = 15.0  # links coming up / going down
_KILL_TIMEOUT = 10.0  # processes in a namespace exiting after SIGKILL
_TERM_GRACE = 3.0  # tracked processes get this long to exit after SIGTERM
_LOCK_TIMEOUT = 60.0

_SEQ = itertools.count()  # distinguishes several topologies of one process


class NetnsUnavailable(Exception):
    """Network namespaces cannot be used here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NetnsError(RuntimeError):
    """Building, changing or tearing down a topology failed."""


@dataclass(frozen=True)
class Host:
    """One simulated host: a network namespace and its IPv4 address."""

    name: str
    address: str


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> None:
    """Poll ``predicate`` until it returns true; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)


# --------------------------------------------------------------------------- ip(8) helpers


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise NetnsError(
            f"`ip {' '.join(args)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).stdout.strip()
    if not out:
        return []
    data = json.loads(out)
    return [entry for entry in data if isinstance(entry, dict)]


def _list_namespaces() -> list[str]:
    return [str(entry["name"]) for entry in _ip_json("netns", "list") if "name" in entry]


def _list_links() -> list[dict[str, Any]]:
    return _ip_json("link", "show")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _sysfs_attr(dev: str, attr: str) -> str | None:
    try:
        return Path("/sys/class/net", dev, attr).read_text().strip()
    except OSError:
        return None


def _ns_operstate(ns: str, dev: str) -> str | None:
    result = _ip("-n", ns, "-j", "link", "show", "dev", dev, check=False)
    if result.returncode != 0:
        return None
    try:
        entries = json.loads(result.stdout)
        return str(entries[0].get("operstate"))
    except (ValueError, LookupError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(ns: str) -> list[int]:
    result = _ip("netns", "pids", ns, check=False)
    if result.returncode != 0:
        return []
    return [int(tok) for tok in result.stdout.split() if tok.isdigit()]


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process inside ``ns`` and wait until none is left."""
    me = os.getpid()

    def none_left() -> bool:
        pids = [pid for pid in _namespace_pids(ns) if pid != me]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(none_left, timeout=_KILL_TIMEOUT, what=f"processes in namespace {ns} to exit")


def _delete_namespace(ns: str, *, missing_ok: bool = False) -> str | None:
    """Kill what runs in ``ns`` and delete it; return an error message or None."""
    if missing_ok and ns not in _list_namespaces():
        return None
    try:
        _kill_namespace_processes(ns)
    except TimeoutError as exc:
        return str(exc)
    result = _ip("netns", "del", ns, check=False)
    if result.returncode != 0 and ns in _list_namespaces():
        return f"cannot delete namespace {ns}: {result.stderr.strip()}"
    return None


def _delete_link(name: str) -> str | None:
    result = _ip("link", "del", "dev", name, check=False)
    if result.returncode != 0 and _link_exists(name):
        return f"cannot delete link {name}: {result.stderr.strip()}"
    return None


def _veth_pair_args(veth: str, ns: str) -> list[str]:
    """``ip`` arguments for a veth pair: ``veth`` here, its peer ``eth0`` inside ``ns``."""
    return ["link", "add", "name", veth, "type", "veth", "peer", "name", _IFACE_IN_NS, "netns", ns]


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class _Names:
    """Names of everything one topology (or the probe) creates."""

    prefix: str
    pid: int
    seq: int

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-{self.pid}-{self.seq}-h{i}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}{_b36(self.pid)}-{_b36(self.seq)}"

    def veth(self, i: int) -> str:
        return f"{self.bridge}_{_b36(i)}"

    @property
    def alias(self) -> str:
        return f"{_ALIAS_TAG} prefix={self.prefix} pid={self.pid}"

    def check(self, n_hosts: int) -> None:
        longest = self.veth(max(n_hosts - 1, 0))
        if len(longest) > _IFNAMSIZ:
            raise ValueError(
                f"interface name {longest!r} would exceed {_IFNAMSIZ} characters; "
                "use a shorter prefix or fewer topologies per process"
            )


def _cleanup_stale(prefix: str) -> None:
    """Remove namespaces and links left behind by dead processes using ``prefix``."""
    for link in _list_links():
        match = _ALIAS_RE.match(str(link.get("ifalias", "")))
        if match is None or match["prefix"] != prefix or _pid_alive(int(match["pid"])):
            continue
        _delete_link(str(link.get("ifname", "")))
    ns_re = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-h\d+$")
    for ns in _list_namespaces():
        match = ns_re.match(ns)
        if match is not None and not _pid_alive(int(match[1])):
            _delete_namespace(ns)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for ifc in _ip_json("-4", "addr", "show"):
        for info in ifc.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                used.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if dst in ("", "default"):
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(dst, strict=False))
    return used


def _pick_subnet(pid: int) -> ipaddress.IPv4Network:
    used = _networks_in_use()
    for step in range(256):
        candidate = ipaddress.IPv4Network(f"{SUBNET_BASE}.{(pid + step) % 256}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetnsError(f"no free {SUBNET_BASE}.<k>.0/24 subnet left on this machine")


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialise subnet allocation and stale cleanup between processes."""
    lock_dir = Path("/run/lock")
    if not (lock_dir.is_dir() and os.access(lock_dir, os.W_OK)):
        lock_dir = Path(tempfile.gettempdir())
    with open(lock_dir / "fabric-netns.lock", "a") as handle:

        def acquired() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True

        wait_until(acquired, timeout=_LOCK_TIMEOUT, what="the fabric-netns machine lock")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- availability


def _probe() -> str | None:
    """Really try to build a tiny topology; return why it failed, or None."""
    disabled = os.environ.get(DISABLE_ENV, "")
    if disabled not in ("", "0"):
        return f"disabled by {DISABLE_ENV}={disabled}"
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"

    names = _Names("fab", os.getpid(), next(_SEQ))
    ns, bridge, veth = names.namespace(0), names.bridge, names.veth(0)
    steps: list[tuple[str, list[str]]] = [
        ("create a network namespace", ["netns", "add", ns]),
        ("create a bridge", ["link", "add", "name", bridge, "type", "bridge"]),
        ("label a link", ["link", "set", "dev", bridge, "alias", names.alias]),
        ("create a veth pair into a namespace", _veth_pair_args(veth, ns)),
        ("attach a veth to a bridge", ["link", "set", "dev", veth, "master", bridge]),
        ("run a command in a namespace", ["netns", "exec", ns, "ip", "link", "set", "lo", "up"]),
    ]
    reason: str | None = None
    try:
        for what, args in steps:
            result = _ip(*args, check=False)
            if result.returncode != 0:
                detail = result.stderr.strip() or f"exit status {result.returncode}"
                reason = f"cannot {what} (`ip {' '.join(args)}` as uid {os.geteuid()}): {detail}"
                break
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"cannot run `ip`: {exc}"
    finally:
        leftovers: list[str] = []
        with contextlib.suppress(OSError, subprocess.SubprocessError, NetnsError, ValueError):
            for err in (_delete_link(veth), _delete_link(bridge)):
                if err is not None:
                    leftovers.append(err)
            err = _delete_namespace(ns, missing_ok=True)
            if err is not None:
                leftovers.append(err)
    if reason is None and leftovers:
        reason = "probe could not clean up: " + "; ".join(leftovers)
    return reason


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why network-namespace topologies cannot be built here, or None if they can.

    The first call really creates and deletes a throwaway namespace, bridge and
    veth pair; the answer is cached for the rest of the process.
    """
    return _probe()


def require_netns() -> None:
    """Skip the calling test (with the reason) unless topologies can be built."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


# --------------------------------------------------------------------------- topology

_LIVE: set[Topology] = set()
_LIVE_LOCK = threading.Lock()


class Topology:
    """A bridge in the root namespace plus ``n_hosts`` namespaces attached to it.

    ``hosts[i]`` is namespace ``<prefix>-<pid>-<seq>-h<i>`` with address
    ``<subnet>.(10 + i)/24`` on its ``eth0``; :attr:`bridge_address`
    (``<subnet>.1``) is the root namespace's address on the same subnet.
    Everything is built in ``__init__``; use it as a context manager or call
    :meth:`close`.  Raises :class:`NetnsUnavailable` where namespaces cannot be
    created.
    """

    bridge_address: str
    hosts: list[Host]
    subnet: ipaddress.IPv4Network

    def __init__(self, n_hosts: int, prefix: str = "fab") -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be between 1 and {MAX_HOSTS}, got {n_hosts}")
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)

        self._names = _Names(prefix, os.getpid(), next(_SEQ))
        self._names.check(n_hosts)
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []  # created, in creation order
        self._links: list[str] = []  # root-namespace links created, in creation order
        self._veth: dict[str, str] = {}  # host name -> its root-side veth
        self.hosts = []
        self.bridge_address = ""
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._build(n_hosts)
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup_exc:
                exc.add_note(f"cleanup after the failed build also failed: {cleanup_exc}")
            raise

    # ------------------------------------------------------------------ building

    def _build(self, n_hosts: int) -> None:
        names = self._names
        bridge = names.bridge
        with _machine_lock():
            _cleanup_stale(names.prefix)
            self.subnet = _pick_subnet(names.pid)
            self.bridge_address = str(self.subnet.network_address + 1)
            self._links.append(bridge)
            _ip("link", "add", "name", bridge, "type", "bridge")
            _ip("link", "set", "dev", bridge, "alias", names.alias)
            _ip("link", "set", "dev", bridge, "addrgenmode", "none", check=False)
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", bridge)
            _ip("link", "set", "dev", bridge, "up")

        for i in range(n_hosts):
            ns, veth = names.namespace(i), names.veth(i)
            address = str(self.subnet.network_address + HOST_ADDRESS_OFFSET + i)
            self._namespaces.append(ns)
            _ip("netns", "add", ns)
            self._links.append(veth)
            _ip(*_veth_pair_args(veth, ns))
            _ip("link", "set", "dev", veth, "alias", names.alias)
            # No IPv6 link-local addresses: the hosts speak IPv4 on the subnet only.
            _ip("link", "set", "dev", veth, "addrgenmode", "none", check=False)
            _ip("-n", ns, "link", "set", "dev", _IFACE_IN_NS, "addrgenmode", "none", check=False)
            _ip("link", "set", "dev", veth, "master", bridge)
            _ip("link", "set", "dev", veth, "up")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", _IFACE_IN_NS)
            _ip("-n", ns, "link", "set", "dev", _IFACE_IN_NS, "up")
            self._veth[ns] = veth
            self.hosts.append(Host(name=ns, address=address))

        for host in self.hosts:
            self._wait_link(host, up=True)

    def _link_is_up(self, host: Host) -> bool:
        veth = self._veth[host.name]
        return (
            _sysfs_attr(self._names.bridge, "operstate") == "up"
            and _sysfs_attr(veth, "operstate") == "up"
            and _sysfs_attr(veth, "brport/state") == "3"  # BR_STATE_FORWARDING
            and _ns_operstate(host.name, _IFACE_IN_NS) == "UP"
        )

    def _link_is_down(self, host: Host) -> bool:
        return _sysfs_attr(self._veth[host.name], "operstate") != "up" and _ns_operstate(
            host.name, _IFACE_IN_NS
        ) not in ("UP", None)

    def _wait_link(self, host: Host, *, up: bool) -> None:
        wait_until(
            (lambda: self._link_is_up(host)) if up else (lambda: self._link_is_down(host)),
            timeout=_READY_TIMEOUT,
            what=f"the link of {host.name} to be {'up' if up else 'down'}",
        )

    # ------------------------------------------------------------------ use

    def _check_host(self, host: Host) -> str:
        if host not in self.hosts:
            raise ValueError(f"{host!r} is not a host of {self!r}")
        return self._veth[host.name]

    def _check_open(self) -> None:
        if self._closed:
            raise NetnsError(f"{self!r} is closed")

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``host``'s namespace."""
        self._check_host(host)
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return ["ip", "netns", "exec", host.name, *argv]

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``; it is killed by :meth:`close` if still running.

        ``kwargs`` go to :class:`subprocess.Popen`; the environment is inherited
        unless ``env`` is given.
        """
        command = self.command(host, argv)
        with self._lock:
            self._check_open()
            proc: subprocess.Popen[Any] = subprocess.Popen(command, **kwargs)
            self._procs.append(proc)
        return proc

    def run(
        self, host: Host, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``host`` to completion (``kwargs`` go to :func:`subprocess.run`)."""
        command = self.command(host, argv)
        self._check_open()
        result: subprocess.CompletedProcess[Any] = subprocess.run(command, **kwargs)
        return result

    def link_down(self, host: Host) -> None:
        """Cut ``host`` off the network (its veth goes down) and wait until it is down."""
        veth = self._check_host(host)
        self._check_open()
        _ip("link", "set", "dev", veth, "down")
        self._wait_link(host, up=False)

    def link_up(self, host: Host) -> None:
        """Reconnect ``host`` after :meth:`link_down` and wait until its link forwards."""
        veth = self._check_host(host)
        self._check_open()
        _ip("link", "set", "dev", veth, "up")
        self._wait_link(host, up=True)

    # ------------------------------------------------------------------ teardown

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Kill what runs in the hosts, delete namespaces, veths and bridge; idempotent.

        Raises :class:`NetnsError` if something could not be removed (after
        trying to remove everything else).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
        with _LIVE_LOCK:
            _LIVE.discard(self)

        errors: list[str] = []

        def attempt(step: Callable[[], str | None]) -> None:
            try:
                err = step()
            except Exception as exc:  # keep tearing down the rest
                err = f"{type(exc).__name__}: {exc}"
            if err is not None:
                errors.append(err)

        attempt(functools.partial(_stop_processes, procs))
        # Everything else running in the hosts, including what was not started by popen().
        for ns in self._namespaces:
            attempt(functools.partial(_kill_namespace_processes, ns))
        for link in reversed(self._links):
            attempt(functools.partial(_delete_link, link))
        for ns in reversed(self._namespaces):
            attempt(functools.partial(_delete_namespace, ns, missing_ok=True))
        if errors:
            raise NetnsError(f"incomplete teardown of {self!r}: " + "; ".join(errors))

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"Topology(bridge={self._names.bridge!r}, bridge_address={self.bridge_address!r}, "
            f"hosts={[h.name for h in self.hosts]!r}, {state})"
        )


def _stop_processes(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM the still-running ``procs``, SIGKILL those that outlive the grace period."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: all(p.poll() is not None for p in running),
            timeout=_TERM_GRACE,
            what="processes to exit after SIGTERM",
        )
    for proc in running:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_KILL_TIMEOUT)


def _close_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = [topo for topo in _LIVE if topo._owner_pid == os.getpid()]
    for topo in live:
        try:
            topo.close()
        except Exception as exc:
            print(f"tests.netns: {exc}", file=sys.stderr)


atexit.register(_close_all_at_exit)


# --------------------------------------------------------------------------- pytest glue

_Scope = Literal["session", "package", "module", "class", "function"]


def netns_topology(n_hosts: int, prefix: str = "fab", *, scope: _Scope = "function") -> Any:
    """Make a pytest fixture that yields an open ``Topology(n_hosts, prefix)``.

    The fixture takes the name it is assigned to (``topology5 = netns_topology(5)``),
    skips the test with the reason where namespaces are unavailable, and closes
    the topology afterwards.
    """

    @pytest.fixture(scope=scope)
    def _topology() -> Iterator[Topology]:
        require_netns()
        with Topology(n_hosts, prefix) as topo:
            yield topo

    return _topology


topology3 = netns_topology(3)
"""Fixture: a function-scoped three-host :class:`Topology`."""
