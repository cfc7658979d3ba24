"""The compliance suite, run as an operator would: `fabric compliance run` against a live cluster.

A head and two agents (eu-west-1 and us-east-1, real processes, real mutual TLS) under
`configs/policy-compliance.yaml`: two probe tenants with opposite residencies and an
invariant one of them can break. The suite must pass there and write JSON and JUnit a CI
and an auditor can read; against a cluster whose policy lets the probes' data go
anywhere it must fail, naming what got through; an operator's own checks join a run, and
the checks run under pytest through the plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric._cluster import LocalCluster, NodeSpec
from fabric._pki import CertificateAuthority
from fabric.compliance import (
    Check,
    CheckResult,
    ComplianceConfig,
    ComplianceContext,
    ConfigError,
    Report,
    Status,
    check,
    registered,
)
from fabric.compliance.requirements import GDPR_ART_44, SOC2_CC6_7
from fabric.exceptions import FabricError
from tests.sessions import wait_until_every_agent_sees_every_node

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "configs" / "policy-compliance.yaml"
NODES = [
    NodeSpec("eu-west-1", "eu-west", {"CPU": 2.0}),
    NodeSpec("us-east-1", "us-east", {"CPU": 2.0}),
]
PROBES = ("probe-eu", "probe-us")
BUILTIN = [
    "policy.in-force",
    "transport.plaintext",
    "transport.unknown-ca",
    "transport.expired",
    "transport.revoked",
    "isolation.objects",
    "isolation.actors",
    "isolation.audit",
    "residency.placement",
    "residency.data-movement",
    "budgets.runaway",
    "invariants.enforced",
    "audit.decisions",
    "audit.consistency",
    "audit.inclusion-proof",
]
TIMEOUT = 300


def start(policy: Path) -> LocalCluster:
    """A two-region cluster for the probes under `policy`, with an auditor's certificate."""
    cluster = LocalCluster(NODES, tenants=PROBES, policy=policy).start()
    try:
        CertificateAuthority.load(cluster.certs_dir).issue("operator", "auditor")
        wait_until_every_agent_sees_every_node(cluster, PROBES[0])
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = start(POLICY)
    yield cluster
    cluster.stop()


def suite_args(cluster: LocalCluster) -> list[str]:
    """The connection options of `fabric compliance run`, for `cluster`."""
    return [
        "--address", cluster.head_address,
        "--certs", str(cluster.certs_dir),
        "--policy", str(POLICY),
        "--probe", "tenant/probe-eu",
        "--probe", "tenant/probe-us",
        "--operator", "operator/auditor",
    ]  # fmt: skip


def vkey(cluster: LocalCluster) -> Path:
    return cluster.base_dir / "head" / "audit.vkey"


def run_fabric(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest with the compliance plugin on `directory`'s test_custom.py."""
    plugin = ["-p", "fabric.compliance.plugin", "-p", "no:cacheprovider", "-q"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, *args, "test_custom.py"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


# ----------------------------------------------------------------------------- the CLI


def test_the_suite_passes_against_a_compliant_cluster(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    evidence, junit = tmp_path / "evidence.json", tmp_path / "compliance.xml"
    result = run_fabric(
        "compliance", "run", *suite_args(cluster),
        "--vkey", str(vkey(cluster)), "--allow-revoke", "--strict",
        "--json", str(evidence), "--junit", str(junit),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert [line.split()[1] for line in lines] == BUILTIN
    assert all(line.startswith("PASS  ") for line in lines), result.stdout
    assert "residency.data-movement  [GDPR Art. 44, SOC 2 CC6.7," in result.stdout
    assert result.stdout.splitlines()[-1].startswith("15 checks: 15 passed, 0 failed, 0 skipped")

    report = json.loads(evidence.read_text())
    assert report["summary"] == {"checks": 15, "passed": 15, "failed": 0, "skipped": 0}
    assert report["target"]["probes"] == ["tenant/probe-eu", "tenant/probe-us"]
    assert report["target"]["verifier_key"] == vkey(cluster).read_text().strip()
    checks = by_id(report)
    for entry in checks.values():
        assert entry["status"] == "pass" and entry["requirements"] and entry["description"]
        assert entry["duration_s"] >= 0
    assert {"framework": "GDPR", "ref": "Art. 44", "title": GDPR_ART_44.title} in checks[
        "residency.placement"
    ]["requirements"]
    # Every refusal the residency checks provoked names its rule and its audit entry.
    refusals = [
        r for name in ("residency.placement", "residency.data-movement")
        for r in checks[name]["details"]["refusals"]
    ]  # fmt: skip
    assert {r["rule"] for r in refusals} >= {
        "tenant.run-regions",
        "residency.inputs",
        "residency.store-outside",
        "residency.driver-outside",
    }
    assert all(r["audit"] and r["policy"] == report["target"]["policy_version"] for r in refusals)
    stop = checks["budgets.runaway"]["details"]["error"]
    assert (stop["type"], stop["budget"], stop["limit"]) == (
        "BudgetExceededError",
        "task.cpu_seconds",
        1.0,
    )
    (refusal,) = checks["invariants.enforced"]["details"]["refusals"]
    assert refusal["invariant"] == "probe-eu-computes-in-eu" and refusal["audit"]
    revoked = checks["transport.revoked"]["details"]["refusals"]
    assert {r["code"] for r in revoked} == {"UNAUTHENTICATED"} and len(revoked) == 3
    assert json.loads(checks["audit.inclusion-proof"]["details"]["bundle"])["seq"] >= 0

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("15", "0", "0")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == BUILTIN
    assert all(case.find("failure") is None and case.find("skipped") is None for case in cases)
    out = cases[0].find("system-out")
    assert out is not None and json.loads(out.text or "")["head_version"]


def test_skips_fail_the_run_only_when_strict(cluster: LocalCluster) -> None:
    """Without --vkey the log's integrity cannot be shown: skipped, never passed."""
    args = ["compliance", "run", *suite_args(cluster), "--check", "audit.consistency"]
    lenient = run_fabric(*args)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "SKIP  audit.consistency  [ISO 27001 A.8.15, ISO 27001 A.5.33, SOC 2 CC7.2]  " in (
        lenient.stdout
    )
    assert "skipped: needs the log's verifier key (--vkey)" in lenient.stdout
    strict = run_fabric(*args, "--strict")
    assert strict.returncode == 1


def test_a_cluster_that_lets_probe_data_go_anywhere_fails(tmp_path: Path) -> None:
    """The suite is told the strict policy; the cluster runs one where the probes may run
    and keep data anywhere: the policy check and both residency checks fail, naming
    the versions and what got through, and the run exits 1."""
    document = yaml.safe_load(POLICY.read_text())
    for tenant in document["tenants"].values():
        tenant["placement"] = {"allow": ["any"]}
        tenant["residency"] = {"default": "any"}
    del document["invariants"]
    lax = tmp_path / "lax.yaml"
    lax.write_text(yaml.safe_dump(document))
    evidence, junit = tmp_path / "evidence.json", tmp_path / "compliance.xml"
    cluster = start(lax)
    try:
        result = run_fabric(
            "compliance", "run", *suite_args(cluster),
            "--check", "policy.*", "--check", "residency.*",
            "--json", str(evidence), "--junit", str(junit),
        )  # fmt: skip
    finally:
        cluster.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    checks = by_id(json.loads(evidence.read_text()))
    assert {name: c["status"] for name, c in checks.items()} == {
        "policy.in-force": "fail",
        "residency.placement": "fail",
        "residency.data-movement": "fail",
    }
    head = checks["policy.in-force"]["details"]["head_version"]
    assert checks["policy.in-force"]["reason"] == (
        f"the head enforces policy version {head}, not "
        f"{checks['policy.in-force']['details']['file_version']} ({POLICY})"
    )
    assert "tenant/probe-us runs work in eu-west: not refused" in " ".join(
        checks["residency.placement"]["details"]["failures"]
    )
    assert checks["residency.data-movement"]["reason"].startswith("8 of 8 attempts got through: ")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "3"
    failures = [case.find("failure") for case in suite.findall("testcase")]
    assert all(f is not None and f.get("message") for f in failures)


CUSTOM_CHECKS = """\
from fabric.compliance import check, fail
from fabric.compliance.requirements import GDPR_ART_44


@check("custom.eu-only", "Every node is in the EU", [GDPR_ART_44])
def eu_only(ctx, evidence):
    regions = sorted({node.region for node in ctx.nodes()})
    evidence.set("regions", regions)
    outside = [r for r in regions if ctx.policy.jurisdiction(r) != "EU"]
    if outside:
        fail(f"nodes outside the EU: {', '.join(outside)}")
    return "every node is in the EU"
"""


def test_an_operators_own_check_joins_the_run(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "my_checks.py").write_text(CUSTOM_CHECKS)
    listed = run_fabric("compliance", "list", "--checks-from", "my_checks", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "custom.eu-only: Every node is in the EU\n    GDPR Art. 44 (" in listed.stdout
    result = run_fabric(
        "compliance", "run", *suite_args(cluster),
        "--checks-from", "my_checks", "--check", "custom.*", "--check", "policy.in-force",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  custom.eu-only  [GDPR Art. 44]  nodes outside the EU: us-east (" in result.stdout
    assert "PASS  policy.in-force  " in result.stdout


CUSTOM_TESTS = """\
from fabric.compliance import ComplianceContext


def test_every_probe_has_a_home(compliance_context: ComplianceContext) -> None:
    assert all(compliance_context.home(probe) for probe in compliance_context.probes)


def test_the_nodes_are_the_expected_ones(compliance_context: ComplianceContext) -> None:
    assert [n.region for n in compliance_context.nodes()] == ["eu-west", "us-east"]


def test_builtin(builtin_check, compliance_check) -> None:
    compliance_check(builtin_check)
"""


def test_the_checks_run_under_pytest_through_the_plugin(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    (tmp_path / "test_custom.py").write_text(CUSTOM_TESTS)
    options = [
        "--fabric-address", cluster.head_address,
        "--fabric-certs", str(cluster.certs_dir),
        "--fabric-policy", str(POLICY),
        "--fabric-probe", "tenant/probe-eu",
        "--fabric-probe", "tenant/probe-us",
        "--fabric-operator", "operator/auditor",
        "--fabric-vkey", str(vkey(cluster)),
    ]  # fmt: skip
    result = run_pytest(tmp_path, "-rs", *options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Every built-in check but the revocation one, which needs --fabric-allow-revoke.
    assert "16 passed, 1 skipped" in result.stdout
    assert "transport.revoked: skipped: needs --allow-revoke" in result.stdout
    # Without a fabric to check, the plugin's tests are skipped, not failed.
    bare = run_pytest(tmp_path)
    assert bare.returncode == 0, bare.stdout[-3000:]
    assert "17 skipped" in bare.stdout


# ----------------------------------------------------------------------------- no cluster


def config(**changes: Any) -> ComplianceConfig:
    values: dict[str, Any] = {
        "address": "127.0.0.1:1",
        "certs": Path("certs"),
        "policy": POLICY,
        "probes": ("tenant/probe-eu", "tenant/probe-us"),
        "operator": "operator/auditor",
    }
    values.update(changes)
    return ComplianceConfig(**values)


def test_the_public_api_is_exactly_this() -> None:
    import fabric.compliance

    assert sorted(fabric.compliance.__all__) == [
        "Check",
        "CheckFailed",
        "CheckResult",
        "CheckSkipped",
        "ComplianceConfig",
        "ComplianceContext",
        "ComplianceError",
        "ConfigError",
        "Evidence",
        "LiveNode",
        "Probe",
        "Report",
        "Requirement",
        "Status",
        "check",
        "fail",
        "load_checks_from",
        "registered",
        "run_check",
        "run_checks",
        "skip",
    ]
    assert issubclass(fabric.compliance.ComplianceError, FabricError)


def test_the_built_in_checks_are_these_in_this_order() -> None:
    assert [c.id for c in registered()][: len(BUILTIN)] == BUILTIN
    assert [c.id for c in registered(["residency.*"])] == BUILTIN[8:10]
    for built_in in registered():
        assert built_in.requirements and built_in.description, built_in.id


def test_a_pattern_that_matches_no_check_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^no check matches 'residence\.\*' \(checks: policy"):
        registered(["residence.*"])


def test_a_check_id_is_registered_once() -> None:
    with pytest.raises(ValueError, match=r"^a check 'policy.in-force' is already registered "):
        check("policy.in-force", "again", [SOC2_CC6_7])(lambda ctx, evidence: "")
    with pytest.raises(ValueError, match=r"^bad check id 'Policy': expected group.name"):
        check("Policy", "bad", [SOC2_CC6_7])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"probes": ("tenant/probe-eu", "tenant/mallory")},
            r"^probe tenant/mallory is no tenant of .*policy-compliance\.yaml$",
        ),
        (
            {"probes": ("tenant/probe-eu", "tenant/probe-eu")},
            r"^the suite needs at least two probes of different tenants$",
        ),
        ({"probes": ("probe-eu", "tenant/probe-us")}, r"^bad identity 'probe-eu': expected tenant"),
        (
            {"operator": "operator/admin2"},
            r"^operator/admin2 is neither an operator nor an auditor under ",
        ),
        (
            {"policy": ROOT / "configs" / "missing.yaml"},
            r"^--policy .*missing\.yaml: .*missing\.yaml:0:0: cannot read the policy",
        ),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_runs(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ComplianceContext(config(**changes))


def test_the_junit_xml_says_failed_and_skipped_as_ci_reads_them() -> None:
    import datetime as dt

    checks: dict[str, Check] = {c.id: c for c in registered()}
    report = Report(target={"head": "h:1"}, started=dt.datetime.now(dt.UTC), duration=1.5)
    report.results = [
        CheckResult(checks["policy.in-force"], Status.PASS, "ok", 0.1),
        CheckResult(checks["transport.revoked"], Status.SKIP, "skipped: no", 0.0),
        CheckResult(checks["residency.placement"], Status.FAIL, "got through", 0.2, {"x": 1}),
    ]
    assert not report.ok() and not report.ok(strict=True)
    root = report.to_junit().getroot()
    assert root is not None
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    passed, skipped, failed = suite.findall("testcase")
    assert passed.find("failure") is None and passed.find("skipped") is None
    skip = skipped.find("skipped")
    assert skip is not None and skip.get("message") == "skipped: no"
    failure = failed.find("failure")
    assert failure is not None and failure.get("message") == "got through"
    assert failed.get("classname") == "fabric-compliance.residency"
