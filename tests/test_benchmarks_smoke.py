"""The benchmark harness runs end to end (small counts; figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_fabric_run_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--systems",
            "fabric",
            "--rounds",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no-op task" in result.stdout
    report = json.loads(out.read_text())
    measured = report["systems"]["fabric"]["median"]
    assert set(measured) == set(report["figures"])
    assert all(isinstance(v, float) and v > 0 for v in measured.values()), measured
