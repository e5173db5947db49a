"""What a check finds: one ``Result`` per line, and the ``Report`` that prints them as text or JSON."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    #: not checked, because the chosen configuration does not use it
    SKIP = "skip"


@dataclass(frozen=True)
class Result:
    """One finding. ``name`` is stable (scripts key on it); ``fix`` says what to do when not ok."""

    name: str
    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "message": self.message, "fix": self.fix,
                "details": self.details}


def ok(name: str, message: str, **details: Any) -> Result:
    return Result(name, Status.OK, message, None, details)


def warning(name: str, message: str, fix: str | None = None, **details: Any) -> Result:
    return Result(name, Status.WARNING, message, fix, details)


def error(name: str, message: str, fix: str | None = None, **details: Any) -> Result:
    return Result(name, Status.ERROR, message, fix, details)


def skip(name: str, message: str, **details: Any) -> Result:
    return Result(name, Status.SKIP, message, None, details)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    #: the configuration the checks ran against, echoed for the reader
    context: dict[str, Any] = field(default_factory=dict)

    def extend(self, results: Iterable[Result]) -> None:
        self.results.extend(results)

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.results)

    @property
    def exit_code(self) -> int:
        """Non-zero when something the chosen configuration needs is missing (any error)."""
        return 1 if self.count(Status.ERROR) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "errors": self.count(Status.ERROR),
            "warnings": self.count(Status.WARNING),
            "config": self.context,
            "checks": [r.as_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def to_text(self) -> str:
        width = max((len(r.name) for r in self.results), default=0)
        pad = " " * (9 + width + 2)
        lines = [self._heading(), ""]
        for r in self.results:
            lines.append(f"  {r.status.value:<8} {r.name:<{width}}  {r.message}")
            if r.fix and r.status in (Status.WARNING, Status.ERROR):
                lines.append(f"  {pad}fix: {r.fix}")
        errors, warnings = self.count(Status.ERROR), self.count(Status.WARNING)
        verdict = "ready" if not errors else "not ready"
        lines += ["", f"{verdict}: {errors} error{'s' * (errors != 1)}, "
                      f"{warnings} warning{'s' * (warnings != 1)}"]
        return "\n".join(lines)

    def _heading(self) -> str:
        c = self.context
        labels = {"discovery_backend": "discovery", "request_plane": "request plane",
                  "event_plane": "event plane", "namespace": "namespace",
                  "engine": "engine"}
        parts = [f"{label} {c[k]}" for k, label in labels.items() if c.get(k)]
        return "dynamo check" + (f" ({', '.join(parts)})" if parts else "")
