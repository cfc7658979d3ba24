"""`fabric demo --policy FILE`: every tenant of a policy at work on a local cluster with one
agent per region, showing where its work is placed and what the policy refuses.

For each tenant the demo asks to run in every region, stores an object under its default
residency and under each of its data classes, runs work on them, and tries to read them
from a driver connected in each region. Every answer comes from the running fabric: a
placement is where the task really ran, a refusal is the error the fabric raised, with
the rule that decided it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fabric
from fabric._cluster import LocalCluster, NodeSpec
from fabric.exceptions import FabricError
from fabric.policy import load_policy
from fabric.policy._model import Policy, describe_regions

TIMEOUT = 60.0


@fabric.remote
def where() -> str:
    return fabric.get_runtime_context().region


@fabric.remote
def size(value: list[int]) -> tuple[str, int]:
    return fabric.get_runtime_context().region, len(value)


def node_for(policy: Policy, region: str) -> str:
    """A node id that the policy lets claim `region`: `<region>-1` when a claim allows it."""
    for candidate in (f"{region}-1", f"{region}-node-1", f"{region}"):
        if any(
            region in claim.regions and fnmatch.fnmatchcase(f"node/{candidate}", claim.identity)
            for claim in policy.nodes
        ):
            return candidate
    raise FabricError(
        f"the policy lets no node named like {region}-1 claim region {region}; "
        "add a node claim such as 'node/" + region + "-*'"
    )


def _outcome(ref: fabric.ObjectRef) -> str:
    try:
        return f"ok: {fabric.get(ref, timeout=TIMEOUT)}"
    except FabricError as e:
        return _refused(e)


def _refused(e: FabricError) -> str:
    return f"REFUSED ({type(e).__name__}): {str(e).splitlines()[0]}"


def _put(value: Any, residency: str | None = None) -> fabric.ObjectRef | str:
    try:
        return fabric.put(value, residency=residency)
    except FabricError as e:
        return _refused(e)


def run(policy_path: Path, print_: Callable[[str], Any] = print) -> dict[str, Any]:
    """Start one agent per region of the policy, run each tenant's probes, print them;
    returns {tenant: {probe: outcome}}."""
    started = time.perf_counter()
    policy = load_policy(policy_path)
    nodes = {region: node_for(policy, region) for region in sorted(policy.regions)}
    tenants = {
        name: next(i.split("/", 1)[1] for i in sorted(t.identities) if i.startswith("tenant/"))
        for name, t in policy.tenants.items()
    }
    specs = [NodeSpec(node, region, {"CPU": 1.0}) for region, node in nodes.items()]
    facts: dict[str, dict[str, str]] = {}
    with LocalCluster(specs, tenants=sorted(tenants.values()), policy=policy_path) as cluster:
        print_(
            f"Fabric policy demo: policy {policy.version} from {policy_path}, "
            f"{len(specs)} agents in {len(nodes)} regions, {len(tenants)} tenants "
            f"({time.perf_counter() - started:.1f} s to start)"
        )
        for region, node in nodes.items():
            print_(f"  {node:<18}{region:<12}jurisdiction {policy.jurisdiction(region)}")

        def connect(identity: str, region: str) -> None:
            fabric.init(
                address=cluster.agent_addresses[nodes[region]],
                certs=cluster.certs_dir,
                identity=f"tenant/{identity}",
            )

        for name, identity in tenants.items():
            tenant = policy.tenants[name]
            home = sorted(tenant.default_residency or policy.regions)[0]
            print_(
                f"\nTenant {name}: runs in {describe_regions(tenant.run_regions)}; data by "
                f"default in {describe_regions(tenant.default_residency)}; driver on {home}"
            )
            probes: dict[str, str] = {}
            connect(identity, home)
            try:
                for region in nodes:
                    probes[f"run in {region}"] = _outcome(where.options(region=region).remote())
                data = _put(list(range(100)))
                for region in nodes:
                    probes[f"default data to a task in {region}"] = (
                        data
                        if isinstance(data, str)
                        else _outcome(size.options(region=region).remote(data))
                    )
                probes[f"own result, driver on {home}"] = _outcome(where.remote())
            finally:
                fabric.shutdown()
            for label, allowed in sorted(tenant.data_classes.items()):
                # A driver where the class may live puts it; tasks elsewhere may not see it.
                connect(identity, sorted(allowed)[0])
                try:
                    classified = _put(list(range(10)), residency=label)
                    for region in nodes:
                        probes[f"'{label}' data to a task in {region}"] = (
                            classified
                            if isinstance(classified, str)
                            else _outcome(size.options(region=region).remote(classified))
                        )
                finally:
                    fabric.shutdown()
            for region in nodes:
                if region == home:
                    continue
                connect(identity, region)
                try:
                    probes[f"result read by a driver on {region}"] = _outcome(where.remote())
                finally:
                    fabric.shutdown()
            for probe, outcome in probes.items():
                print_(f"  {probe:<44}{outcome}")
            facts[name] = probes
        print_(f"\nDone in {time.perf_counter() - started:.1f} s.")
    return facts
