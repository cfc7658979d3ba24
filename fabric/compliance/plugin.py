"""The compliance suite as a pytest plugin, for operators who add checks of their own.

Loaded with ``pytest -p fabric.compliance.plugin`` (or automatically where the package is
installed, through its ``pytest11`` entry point). It adds the options ``--fabric-address``,
``--fabric-certs``, ``--fabric-policy``, ``--fabric-probe`` (twice or more),
``--fabric-operator``, ``--fabric-vkey``, ``--fabric-allow-revoke`` and
``--fabric-timeout``, the same as ``fabric compliance run`` takes, and these fixtures:

- ``compliance_context``: a :class:`~fabric.compliance.ComplianceContext` open for the
  whole session (tests using it are skipped when no ``--fabric-address`` is given);
- ``compliance_check``: runs a registered check by id and passes, fails or skips the
  test as the check did, returning its :class:`~fabric.compliance.CheckResult`;
- ``builtin_check``: a test that takes it runs once per registered check, with its id.

An operator's test::

    def test_every_node_is_in_the_eu(compliance_context):
        assert {n.region for n in compliance_context.nodes()} <= {"eu-west", "eu-central"}

    def test_the_suite(builtin_check, compliance_check):
        compliance_check(builtin_check)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fabric.compliance.checks import Status, registered
from fabric.compliance.context import DEFAULT_TIMEOUT, ComplianceConfig, ComplianceContext
from fabric.compliance.report import CheckResult


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fabric-compliance", "Fabric compliance suite")
    group.addoption("--fabric-address", metavar="HEAD", help="the fabric's head, HOST:PORT")
    group.addoption("--fabric-certs", metavar="DIR", help="the certificate directory")
    group.addoption("--fabric-policy", metavar="FILE", help="the policy that should be in force")
    group.addoption(
        "--fabric-probe",
        action="append",
        default=[],
        metavar="tenant/NAME",
        help="a probe tenant of the policy (at least two)",
    )
    group.addoption(
        "--fabric-operator", metavar="operator/NAME", help="an operator or auditor of the policy"
    )
    group.addoption("--fabric-vkey", metavar="VKEY_OR_FILE", help="the audit log's verifier key")
    group.addoption(
        "--fabric-allow-revoke",
        action="store_true",
        help="let the revocation check revoke a fresh probe certificate",
    )
    group.addoption(
        "--fabric-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for any one thing (default: %(default)s)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "builtin_check" in metafunc.fixturenames:
        ids = [c.id for c in registered()]
        metafunc.parametrize("builtin_check", ids, ids=ids)


def _config(options: pytest.Config) -> ComplianceConfig | None:
    address = options.getoption("fabric_address")
    if not address:
        return None
    missing = [
        f"--fabric-{name}"
        for name in ("certs", "policy", "operator")
        if not options.getoption(f"fabric_{name}")
    ]
    if missing:
        raise pytest.UsageError(f"--fabric-address also needs {', '.join(missing)}")
    return ComplianceConfig(
        address=address,
        certs=Path(options.getoption("fabric_certs")),
        policy=Path(options.getoption("fabric_policy")),
        probes=tuple(options.getoption("fabric_probe")),
        operator=options.getoption("fabric_operator"),
        vkey=options.getoption("fabric_vkey"),
        allow_revoke=bool(options.getoption("fabric_allow_revoke")),
        timeout=float(options.getoption("fabric_timeout")),
    )


@pytest.fixture(scope="session")
def compliance_config(pytestconfig: pytest.Config) -> ComplianceConfig:
    config = _config(pytestconfig)
    if config is None:
        pytest.skip("no --fabric-address: no fabric to check")
    return config


@pytest.fixture(scope="session")
def compliance_context(compliance_config: ComplianceConfig) -> Iterator[ComplianceContext]:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with ComplianceContext(compliance_config) as ctx:
        yield ctx


@pytest.fixture
def compliance_check(
    compliance_context: ComplianceContext,
    record_property: Callable[[str, object], None],
) -> Callable[[str], CheckResult]:
    """Run a registered check by id; the test passes, fails or skips as the check does."""
    from fabric.compliance.runner import run_check

    def run(check_id: str) -> CheckResult:
        check = next((c for c in registered() if c.id == check_id), None)
        if check is None:
            raise pytest.UsageError(f"no registered check {check_id!r}")
        result = run_check(compliance_context, check)
        record_property("requirements", "; ".join(str(r) for r in check.requirements))
        record_property("reason", result.reason)
        if result.status is Status.FAIL:
            pytest.fail(f"{check.id}: {result.reason}", pytrace=False)
        if result.status is Status.SKIP:
            pytest.skip(f"{check.id}: {result.reason}")
        return result

    return run
