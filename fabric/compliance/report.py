"""A run's results, as lines for a terminal, a JSON evidence file and JUnit XML for CI.

The JSON file is what a compliance officer files: for every check its id, title, the
requirements it evidences, its status and reason, how long it took, what it does (its
docstring) and the evidence it gathered (audit entry ids, error messages, proof
bundles), under a header naming the fabric, the policy and the identities used. The JUnit
file has one ``testcase`` per check (``failure`` / ``skipped`` as JUnit readers expect),
with the evidence as JSON in ``system-out``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.compliance.checks import Check, Status

__all__ = ["SUITE", "CheckResult", "Report", "render_line"]

SUITE = "fabric-compliance"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckResult:
    check: Check
    status: Status
    reason: str
    duration: float
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.check.id,
            "title": self.check.title,
            "requirements": [r.to_dict() for r in self.check.requirements],
            "status": self.status.value,
            "reason": self.reason,
            "duration_s": round(self.duration, 3),
            "description": self.check.description,
            "details": dict(self.details),
        }


@dataclass
class Report:
    """The results of one run, in the order the checks ran."""

    target: Mapping[str, Any]
    started: _dt.datetime
    results: list[CheckResult] = field(default_factory=list)
    duration: float = 0.0

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.results)

    def ok(self, strict: bool = False) -> bool:
        """No check failed (and, if `strict`, none was skipped)."""
        bad = {Status.FAIL, Status.SKIP} if strict else {Status.FAIL}
        return not any(r.status in bad for r in self.results)

    def summary(self) -> str:
        return (
            f"{len(self.results)} checks: {self.count(Status.PASS)} passed, "
            f"{self.count(Status.FAIL)} failed, {self.count(Status.SKIP)} skipped "
            f"in {self.duration:.1f} s"
        )

    # -- JSON --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": SUITE,
            "format": FORMAT_VERSION,
            "started": self.started.isoformat().replace("+00:00", "Z"),
            "duration_s": round(self.duration, 3),
            "target": dict(self.target),
            "summary": {
                "checks": len(self.results),
                "passed": self.count(Status.PASS),
                "failed": self.count(Status.FAIL),
                "skipped": self.count(Status.SKIP),
            },
            "checks": [r.to_dict() for r in self.results],
        }

    def write_json(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)
        _write(path, text + "\n")

    # -- JUnit -------------------------------------------------------------------------

    def to_junit(self) -> ET.ElementTree:
        """JUnit XML in the form CI servers read (Jenkins, GitLab, GitHub reporters)."""
        suites = ET.Element("testsuites", name=SUITE)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=SUITE,
            tests=str(len(self.results)),
            failures=str(self.count(Status.FAIL)),
            errors="0",
            skipped=str(self.count(Status.SKIP)),
            time=f"{self.duration:.3f}",
            timestamp=self.started.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        properties = ET.SubElement(suite, "properties")
        for name, value in sorted(self.target.items()):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            ET.SubElement(properties, "property", name=name, value=text)
        for result in self.results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{SUITE}.{result.check.group}",
                name=result.check.id,
                time=f"{result.duration:.3f}",
            )
            requirements = "; ".join(str(r) for r in result.check.requirements)
            if result.status is Status.FAIL:
                failure = ET.SubElement(case, "failure", message=result.reason, type="CheckFailed")
                failure.text = f"{result.check.title}\nrequirements: {requirements}"
            elif result.status is Status.SKIP:
                ET.SubElement(case, "skipped", message=result.reason)
            out = ET.SubElement(case, "system-out")
            out.text = json.dumps(
                {"requirements": requirements, "reason": result.reason, **result.details},
                indent=2,
                sort_keys=True,
                default=str,
            )
        ET.indent(suites)
        return ET.ElementTree(suites)

    def write_junit(self, path: Path) -> None:
        root = self.to_junit().getroot()
        assert root is not None
        text = ET.tostring(root, encoding="unicode", xml_declaration=True)
        _write(path, text + "\n")


def render_line(result: CheckResult) -> str:
    """``PASS  transport.plaintext  [SOC 2 CC6.7, ...]  reason (0.1 s)``: one line per check."""
    refs = ", ".join(r.short for r in result.check.requirements)
    label = result.status.name
    return f"{label:<4}  {result.check.id}  [{refs}]  {result.reason} ({result.duration:.1f} s)"


def _write(path: Path, text: str) -> None:
    """Write by rename, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
