"""The requirements the compliance checks produce evidence for.

Each constant names one clause by its framework's own numbering and a short title, not its
text: an auditor reads the clause itself. A check cites every clause its result is
evidence for; whether that evidence is sufficient is the auditor's judgement, not the
suite's.

- GDPR: Regulation (EU) 2016/679.
- SOC 2: the AICPA 2017 Trust Services Criteria (revised points of focus, 2022).
- ISO/IEC 27001:2022, Annex A controls.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GDPR_ART_5_2",
    "GDPR_ART_25",
    "GDPR_ART_32_1_A",
    "GDPR_ART_32_1_B",
    "GDPR_ART_32_1_D",
    "GDPR_ART_44",
    "ISO_A_5_18",
    "ISO_A_5_33",
    "ISO_A_5_34",
    "ISO_A_8_3",
    "ISO_A_8_5",
    "ISO_A_8_6",
    "ISO_A_8_9",
    "ISO_A_8_15",
    "ISO_A_8_24",
    "ISO_A_8_27",
    "SOC2_A1_1",
    "SOC2_CC6_1",
    "SOC2_CC6_2",
    "SOC2_CC6_3",
    "SOC2_CC6_6",
    "SOC2_CC6_7",
    "SOC2_CC7_2",
    "SOC2_CC7_3",
    "SOC2_CC8_1",
    "Requirement",
]


@dataclass(frozen=True)
class Requirement:
    """One clause of one framework, e.g. ``Requirement("GDPR", "Art. 44", "...")``."""

    framework: str
    ref: str
    title: str

    @property
    def short(self) -> str:
        """``"GDPR Art. 44"``: the framework and the clause, for one-line summaries."""
        return f"{self.framework} {self.ref}"

    def __str__(self) -> str:
        return f"{self.short} ({self.title})"

    def to_dict(self) -> dict[str, str]:
        return {"framework": self.framework, "ref": self.ref, "title": self.title}


GDPR = "GDPR"
SOC2 = "SOC 2"
ISO = "ISO 27001"

GDPR_ART_5_2 = Requirement(GDPR, "Art. 5(2)", "accountability")
GDPR_ART_25 = Requirement(GDPR, "Art. 25", "data protection by design and by default")
GDPR_ART_32_1_A = Requirement(GDPR, "Art. 32(1)(a)", "security of processing: encryption")
GDPR_ART_32_1_B = Requirement(
    GDPR,
    "Art. 32(1)(b)",
    "security of processing: confidentiality, integrity, availability and resilience",
)
GDPR_ART_32_1_D = Requirement(
    GDPR, "Art. 32(1)(d)", "security of processing: regularly testing the measures"
)
GDPR_ART_44 = Requirement(GDPR, "Art. 44", "general principle for transfers to third countries")

SOC2_CC6_1 = Requirement(SOC2, "CC6.1", "logical access security over protected information")
SOC2_CC6_2 = Requirement(SOC2, "CC6.2", "credentials issued and removed when no longer authorized")
SOC2_CC6_3 = Requirement(SOC2, "CC6.3", "access authorized by role, least privilege")
SOC2_CC6_6 = Requirement(SOC2, "CC6.6", "logical access from outside the system boundaries")
SOC2_CC6_7 = Requirement(SOC2, "CC6.7", "transmission and movement of information restricted")
SOC2_CC7_2 = Requirement(SOC2, "CC7.2", "system components monitored for anomalies")
SOC2_CC7_3 = Requirement(SOC2, "CC7.3", "security events evaluated")
SOC2_CC8_1 = Requirement(SOC2, "CC8.1", "changes authorized and implemented as approved")
SOC2_A1_1 = Requirement(SOC2, "A1.1", "processing capacity and use monitored and managed")

ISO_A_5_18 = Requirement(ISO, "A.5.18", "access rights")
ISO_A_5_33 = Requirement(ISO, "A.5.33", "protection of records")
ISO_A_5_34 = Requirement(ISO, "A.5.34", "privacy and protection of PII")
ISO_A_8_3 = Requirement(ISO, "A.8.3", "information access restriction")
ISO_A_8_5 = Requirement(ISO, "A.8.5", "secure authentication")
ISO_A_8_6 = Requirement(ISO, "A.8.6", "capacity management")
ISO_A_8_9 = Requirement(ISO, "A.8.9", "configuration management")
ISO_A_8_15 = Requirement(ISO, "A.8.15", "logging")
ISO_A_8_24 = Requirement(ISO, "A.8.24", "use of cryptography")
ISO_A_8_27 = Requirement(ISO, "A.8.27", "secure system architecture and engineering principles")
