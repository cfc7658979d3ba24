"""Applying, showing and enforcing a policy on a running cluster (one host, two regions).

The head starts under `configs/policy-two-tenants.yaml`; operators apply new versions with
`fabric policy apply`, which the head signs and every agent verifies before using.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fabric.cli.main import main as cli_main
from fabric.policy import load_policy, load_policy_text

import fabric
from fabric._cluster import LocalCluster, NodeSpec
from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._policy_bundle import PolicyBundleError, sign_policy, verify_policy
from fabric.exceptions import PlacementRefusedError, QuotaExceededError
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session

CONFIGS = Path(__file__).parent.parent / "configs"
POLICY = CONFIGS / "policy-two-tenants.yaml"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def governed() -> Iterator[LocalCluster]:
    nodes = [
        NodeSpec("eu-west-1", "eu-west", {"CPU": 2}),
        NodeSpec("us-east-1", "us-east", {"CPU": 2}),
    ]
    with LocalCluster(nodes, tenants=["alice", "bob"], policy=POLICY) as cluster:
        yield cluster


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def head_args(cluster: LocalCluster, identity: str = "operator/admin") -> list[str]:
    return [
        "--address",
        cluster.head_address,
        "--certs",
        str(cluster.certs_dir),
        "--identity",
        identity,
    ]


def policy_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = POLICY.read_text()
    assert old in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new))
    return path


@contextlib.contextmanager
def applied(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], path: Path
) -> Iterator[None]:
    """`path` in force on eu-west-1 for the block; the example policy again after it."""
    version = load_policy(path).version
    assert run(capsys, "policy", "apply", path, *head_args(cluster))[0] == 0
    try:
        wait_for(
            lambda: _welcome_version(cluster, "eu-west-1") == version,
            what=f"policy {version} on eu-west-1",
        )
        yield
    finally:
        assert run(capsys, "policy", "apply", POLICY, *head_args(cluster))[0] == 0


@fabric.remote
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return fabric.get_runtime_context().region


def test_show_prints_the_policy_in_force_and_its_version(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    version = load_policy(POLICY).version
    code, out, _ = run(capsys, "policy", "show", *head_args(governed), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["version"] == version
    assert set(shown["document"]["tenants"]) == {"alice", "bob"}
    # A tenant sees the regions and its own part, not who else shares the cluster.
    code, out, _ = run(capsys, "policy", "show", *head_args(governed, "tenant/alice"))
    assert code == 0
    assert f"# policy version {version}" in out
    assert "alice" in out and "bob" not in out and "operator/" not in out


def test_a_bad_policy_is_refused_whole(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = load_policy(POLICY).version
    typo = policy_variant(
        tmp_path, "residency:\n      default: EU", "residancy:\n      default: EU"
    )
    code, _, err = run(capsys, "policy", "apply", typo, *head_args(governed))
    assert code == 1
    assert "nothing was applied" in err and "did you mean 'residency'" in err
    # A policy that would disown a live node's region is refused too.
    disowned = policy_variant(tmp_path, '"node/us-east-*"', '"node/us-west-*"')
    code, _, err = run(capsys, "policy", "apply", disowned, *head_args(governed))
    assert code == 1
    assert "us-east-1 may not claim region 'us-east'" in err
    # Only operators apply: a tenant is refused by the head's interceptor.
    code, _, err = run(capsys, "policy", "apply", POLICY, *head_args(governed, "tenant/alice"))
    assert code == 1 and "refused" in err
    code, out, _ = run(capsys, "policy", "show", *head_args(governed), "--json")
    assert json.loads(out)["version"] == before


def test_an_applied_policy_reaches_every_agent_and_governs_new_work(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # bob's data, unrestricted so far, must now stay in the US.
    strict = policy_variant(tmp_path, "default: any", "default: US")
    version = load_policy(strict).version
    code, out, _ = run(capsys, "policy", "apply", strict, "--dry-run", *head_args(governed))
    assert (code, out.strip()) == (0, f"{strict}: would apply policy version {version}")
    with tenant_session(governed, "bob", "us-east-1") as bob, acting_as(bob):
        assert bob.policy_version != version
        # Admitted under the old version, placed in the EU: it keeps that version.
        running = nap.options(region="eu-west").remote(2.0)
        code, _, _ = run(capsys, "policy", "apply", strict, *head_args(governed))
        assert code == 0
        for node in ("eu-west-1", "us-east-1"):
            wait_for(
                functools.partial(_has_version, governed, node, version),
                what=f"{node} to use policy {version}",
            )
        assert fabric.get(running, timeout=TIMEOUT) == "eu-west"
    with tenant_session(governed, "bob", "us-east-1") as bob, acting_as(bob):
        with pytest.raises(PlacementRefusedError, match=f"residency.inputs.*policy {version}"):
            fabric.get(nap.options(region="eu-west").remote(0), timeout=TIMEOUT)
        assert fabric.get(nap.remote(0), timeout=TIMEOUT) == "us-east"
    code, _, _ = run(capsys, "policy", "apply", POLICY, *head_args(governed))
    assert code == 0


def _has_version(cluster: LocalCluster, node: str, version: str) -> bool:
    return _welcome_version(cluster, node) == version


def _welcome_version(cluster: LocalCluster, node: str) -> str:
    with tenant_session(cluster, "bob", node) as client:
        return client.policy_version


def test_a_quota_refuses_work_at_admission(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    limited = policy_variant(tmp_path, "tasks: 10000", "tasks: 1")
    with applied(governed, capsys, limited):
        with tenant_session(governed, "alice", "eu-west-1") as alice, acting_as(alice):
            first = nap.remote(1.0)
            with pytest.raises(QuotaExceededError, match=r"tasks quota.*quota\.tasks"):
                fabric.get(nap.remote(0), timeout=TIMEOUT)
            assert fabric.get(first, timeout=TIMEOUT) in ("eu-west", "eu-central")
            # Once the first has finished, there is room again.
            assert fabric.get(nap.remote(0), timeout=TIMEOUT) == "eu-west"


def test_an_object_store_quota_refuses_a_put_at_once(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    limited = policy_variant(tmp_path, "object_store: 64GiB", "object_store: 1MiB")
    with applied(governed, capsys, limited):
        with tenant_session(governed, "alice", "eu-west-1") as alice, acting_as(alice):
            small = fabric.put(bytes(100_000))  # stored, within the quota
            with pytest.raises(
                QuotaExceededError, match=r"object-store quota.*quota\.object-store"
            ):
                fabric.put(bytes(2_000_000))
            assert len(fabric.get(small, timeout=TIMEOUT)) == 100_000


def test_status_shows_a_tenant_only_its_own_work(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    def status(identity: str) -> dict[str, Any]:
        code, out, _ = run(capsys, "status", *head_args(governed, identity), "--json")
        assert code == 0
        return {n["node_id"]: n for n in json.loads(out)["nodes"]}

    with tenant_session(governed, "bob", "eu-west-1") as bob, acting_as(bob):
        busy = nap.options(region="eu-west").remote(3.0)
        wait_for(
            lambda: (
                status("operator/admin")["eu-west-1"]["tenants"].get("bob", {}).get("running_tasks")
                == 1
            ),
            what="bob's task in the operator's status",
        )
        alice = status("tenant/alice")["eu-west-1"]
        assert set(alice["tenants"]) <= {"alice"}
        assert alice["running_tasks"] == 0  # bob's task is not alice's business
        fabric.cancel(busy, force=True)


@fabric.remote
def interval(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def test_a_cpu_quota_makes_work_wait_and_refuses_what_never_fits(
    governed: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    limited = policy_variant(tmp_path, "cpus: 64", "cpus: 1")
    with applied(governed, capsys, limited):
        with tenant_session(governed, "alice", "eu-west-1") as alice, acting_as(alice):
            # The node has 2 CPUs, alice may hold 1: her two tasks run one after the other.
            spans = sorted(
                fabric.get(
                    [interval.options(region="eu-west").remote(0.3) for _ in range(2)],
                    timeout=TIMEOUT,
                )
            )
            assert spans[0][1] <= spans[1][0], spans
            with pytest.raises(QuotaExceededError, match=r"quota\.cpus"):
                fabric.get(interval.options(num_cpus=2).remote(0), timeout=TIMEOUT)


# ----------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("bundle-ca"))
    for name in ("head", "eu-west-1"):
        ca.issue("node", name)
    return ca


def _creds(ca: CertificateAuthority, name: str) -> Credentials:
    issued = ca.directory / "issued"
    return Credentials.load(
        CredentialPaths(
            cert=issued / f"node-{name}.pem",
            key=issued / f"node-{name}.key",
            ca=ca.directory / "ca.pem",
            crl=ca.directory / "crl.pem",
        )
    )


def test_agents_accept_only_bundles_the_head_signed(ca: CertificateAuthority) -> None:
    policy = load_policy(POLICY)
    head = _creds(ca, "head")
    signed = sign_policy(policy, head)
    assert verify_policy(signed, head.ca_pem).version == policy.version

    tampered = type(signed)()
    tampered.CopyFrom(signed)
    tampered.document = signed.document.replace(b'"EU"', b'"US"', 1)
    with pytest.raises(PolicyBundleError, match="signature does not match"):
        verify_policy(tampered, head.ca_pem)

    by_a_node = sign_policy(policy, _creds(ca, "eu-west-1"))
    with pytest.raises(PolicyBundleError, match="not by the head"):
        verify_policy(by_a_node, head.ca_pem)

    relabelled = type(signed)()
    relabelled.CopyFrom(signed)
    relabelled.version = "0" * 16
    with pytest.raises(PolicyBundleError, match="digests to"):
        verify_policy(relabelled, head.ca_pem)

    other_ca = CertificateAuthority.create(ca.directory.parent / "other")
    with pytest.raises(PolicyBundleError, match="does not check out"):
        verify_policy(signed, (other_ca.directory / "ca.pem").read_bytes())


def test_policy_text_round_trips_to_the_same_version() -> None:
    text = POLICY.read_text()
    assert load_policy_text(text, "x.yaml").version == load_policy(POLICY).version
