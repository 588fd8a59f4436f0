"""Turning ``fhir.resources`` validation errors into OperationOutcome issues."""

from __future__ import annotations

from pydantic import ValidationError


def issues_from_validation(
    exc: ValidationError, resource_type: str
) -> list[tuple[str | None, str]]:
    """Return ``(FHIRPath expression, message)`` pairs for each pydantic error.

    A location ``('participant', 0, 'status')`` becomes
    ``Appointment.participant[0].status``.
    """
    issues: list[tuple[str | None, str]] = []
    for error in exc.errors():
        path = resource_type
        for part in error.get("loc", ()):
            if isinstance(part, int):
                path += f"[{part}]"
            elif part != "__root__":
                path += f".{part}"
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        issues.append((path, message))
    return issues
