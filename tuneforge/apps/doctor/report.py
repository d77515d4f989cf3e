"""The doctor's findings: one :class:`Check` per line of output, gathered in a :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Check:
    """One line of the doctor's output."""

    status: str  # ok, info, warn, fail, skip
    name: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"  {self.status:<5} {self.name}: {self.detail}"
        return text + (f"\n        fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    """Every check, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)

    def add(self, status: str, name: str, detail: str, fix: str | None = None, log=None) -> Check:
        check = Check(status, name, detail, fix)
        self.checks.append(check)
        if log is not None:
            log(check.line())
        return check

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]
