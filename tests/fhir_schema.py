"""Validation of emitted FHIR JSON against the official R4 JSON schema.

The schema (``fhir.schema.json`` of FHIR 4.0.1, draft-06) is copied under
``tests/data/schemas/fhir/``. It checks structure only, not invariants.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft6Validator

SCHEMA = (
    Path(__file__).parent / "data" / "schemas" / "fhir" / "fhir.schema.r4-4.0.1.json"
)


@cache
def _validator() -> Draft6Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return Draft6Validator(schema)


def fhir_errors(resource: Any) -> list[str]:
    """Schema errors of `resource`, empty when valid."""
    return [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in _validator().iter_errors(resource)
    ]


def assert_valid_fhir(resource: Any) -> None:
    """Fail the test when `resource` breaks the FHIR R4 JSON schema."""
    errors = fhir_errors(resource)
    assert not errors, "\n".join(errors[:10])
