"""Every example in the README runs, so the README cannot drift from the code."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(index: int, tmp_path: Path) -> None:
    code = _blocks("python")[index]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if "square.remote(i) for i in range(10)" in code:
        assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in result.stdout
    if "parse.remote" in code:
        assert "ValueError: invalid literal for int()" in result.stdout
    if 'tracing="console"' in code:
        assert '"name": "fabric.submit"' in result.stdout and "\n42\n" in result.stdout
    if "budget=" in code:
        assert result.stdout.split() == ["task.cpu_seconds", "1.0", "3"]


def test_cluster_walkthrough_runs(tmp_path: Path) -> None:
    [script] = _blocks("bash")
    # The README's port may be taken on a shared machine; everything else runs as written.
    script = script.replace("16380", str(_free_port()))
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        table = result.stdout
        assert re.search(r"^eu-1\s+eu-west\s+127\.0\.0\.1:\d+\s+yes\s+2/2", table, re.M), table
        assert re.search(r"^us-1\s+us-east\s+.*1/1", table, re.M), table
        assert "stopped head" in table
    finally:
        subprocess.run(
            ["fabric", "stop", "--state-dir", str(tmp_path / "state")],
            capture_output=True,
            timeout=60,
        )


def test_setup_commands_are_the_ones_ci_runs() -> None:
    setup = _blocks("sh")[0].strip().splitlines()
    assert setup[0] == "python3 -m pip install -e . && fabric demo"
    ci = (README.parent / ".ci" / "run").read_text()
    assert setup[1] in ci


def test_demo_runs_on_three_regions() -> None:
    result = subprocess.run(
        ["fabric", "demo"], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for node, region in (
        ("eu-west-1", "eu-west"),
        ("eu-central-1", "eu-central"),
        ("us-east-1", "us-east"),
    ):
        assert f"ran on {node:<14}({region})" in out, out
    assert "summed on us-east-1" in out and "4,194,304" in out
    assert "5 calls ran in order: [1, 2, 3, 4, 5]" in out
    assert re.search(
        r"A runaway task .* was stopped after .*: task\.cpu_seconds, limit 0\.5 s", out
    )


def test_policy_commands_run() -> None:
    [script] = _blocks("shell")
    root = README.parent
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "configs/policy-two-tenants.yaml: ok" in result.stdout
    assert "proved: health-stays-in-eu" in result.stdout
    assert "REFUSED (PlacementRefusedError)" in result.stdout
    assert "rule residency.driver-outside" in result.stdout


def test_the_yaml_examples_are_valid_policy_parts() -> None:
    """The README's policy fragments, put in a policy of their own, load as written."""
    import yaml
    from fabric.policy import load_policy_text

    budgets, invariants = (yaml.safe_load(block) for block in _blocks("yaml")[:2])
    document = yaml.safe_load((README.parent / "configs" / "policy-two-tenants.yaml").read_text())
    document["tenants"]["alice"]["budgets"] = budgets["tenants"]["alice"]["budgets"]
    document["invariants"] = invariants["invariants"]
    policy = load_policy_text(yaml.safe_dump(document), "README.md")
    assert policy.tenants["alice"].budgets.task.wall_seconds == 600.0
    assert [i.name for i in policy.invariants] == ["health-on-confidential"]


def test_the_documented_policy_error_is_the_one_printed(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    text = (README.parent / "configs" / "policy-two-tenants.yaml").read_text()
    policy.write_text(
        text.replace("residency:\n      default: EU", "residancy:\n      default: EU")
    )
    result = subprocess.run(
        ["fabric", "policy", "check", "policy.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    documented = re.search(r"reads `(policy\.yaml:.*?)`\.", README.read_text(), re.S)
    assert documented is not None
    assert " ".join(documented.group(1).split()) in result.stderr
