"""`fabric demo --policy`: three tenants, four regions, placements and refusals for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).parent.parent / "configs" / "policy-three-tenants.yaml"
# In a process of its own: the demo connects drivers, and this one may have a session.
SCRIPT = """
import json, sys
from pathlib import Path
from fabric._demo_policy import run
lines = []
facts = run(Path(sys.argv[1]), lines.append)
print(json.dumps({"facts": facts, "lines": lines}))
"""


def test_the_three_tenant_demo_places_and_refuses_as_the_policy_says() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(CONFIG)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    facts, lines = out["facts"], out["lines"]
    clinic, retail, research = facts["clinic"], facts["retail"], facts["research"]
    # clinic: EU only, and its health data only in eu-west.
    assert clinic["run in eu-west"] == "ok: eu-west"
    assert "tenant.run-regions" in clinic["run in us-east"]
    assert clinic["'health' data to a task in eu-west"] == "ok: ('eu-west', 10)"
    assert "residency.inputs" in clinic["'health' data to a task in eu-central"]
    assert "residency.driver-outside" in clinic["result read by a driver on us-east"]
    # retail runs anywhere; its payments data stays in the US.
    assert all(retail[f"run in {r}"] == f"ok: {r}" for r in ("ap-south", "us-east", "eu-west"))
    assert "residency.inputs" in retail["'payments' data to a task in eu-west"]
    assert retail["'payments' data to a task in us-east"] == "ok: ('us-east', 10)"
    # research runs only in the US and India.
    assert "tenant.run-regions" in research["run in eu-central"]
    assert research["run in ap-south"] == "ok: ap-south"
    assert any("REFUSED" in line for line in lines)
    assert lines[-1].strip().startswith("Done in")
