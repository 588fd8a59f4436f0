"""Validation of audit messages against the DICOM PS3.15 A.5.1 schema.

Test modules call :func:`assert_valid_audit` on every message they build. The
schema is the one of the standard, copied under ``tests/data/schemas/``; both
its W3C XML Schema and RELAX NG forms are checked, since lxml supports both and
a converter slip in either would otherwise go unnoticed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

SCHEMA_DIR = Path(__file__).parent / "data" / "schemas" / "dicom-audit"
XSD_PATH = SCHEMA_DIR / "dicom-ps3.15-A.5.1-audit-message.xsd"
RNG_PATH = SCHEMA_DIR / "dicom-ps3.15-A.5.1-audit-message.rng"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


@cache
def _validators() -> tuple[Any, Any]:
    xsd = etree.XMLSchema(etree.parse(str(XSD_PATH), parser=_PARSER))
    rng = etree.RelaxNG(etree.parse(str(RNG_PATH), parser=_PARSER))

    return xsd, rng


def audit_errors(xml: bytes) -> list[str]:
    """Return the schema errors of an audit message, empty when valid.

    Parameters
    ----------
    xml : bytes
        The ``AuditMessage`` document.

    Returns
    -------
    list of str
        One line per error, prefixed with the schema language that found it.
    """
    doc = etree.fromstring(xml, parser=_PARSER).getroottree()
    errors: list[str] = []
    for language, validator in zip(("XSD", "RNG"), _validators(), strict=True):
        if not validator.validate(doc):
            errors.extend(f"{language}: {error}" for error in validator.error_log)

    return errors


def assert_valid_audit(xml: bytes) -> None:
    """Fail unless ``xml`` is valid against the DICOM audit message schema.

    Parameters
    ----------
    xml : bytes
        The ``AuditMessage`` document.

    Raises
    ------
    AssertionError
        Listing every schema error, when the message is invalid.
    """
    errors = audit_errors(xml)
    assert not errors, "audit message invalid:\n" + "\n".join(errors)
