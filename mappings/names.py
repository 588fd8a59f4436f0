"""Person names between FHIR HumanName, HL7 v2 XPN and DICOM PN.

Limitations
-----------
Only the alphabetic component group of a DICOM PN is produced; ideographic and
phonetic groups are neither read nor written.
"""

from __future__ import annotations

import unicodedata


def to_dicom_pn(family: str | None, given: list[str]) -> str:
    """Return the alphabetic DICOM PN ``FAMILY^Given^Middle``."""
    parts = [family or ""]
    if given:
        parts.append(given[0])
        if len(given) > 1:
            parts.append(" ".join(given[1:]))
    return "^".join(parts).rstrip("^")


def from_dicom_pn(value: str) -> tuple[str, list[str]]:
    """Split the alphabetic group of a PN into family name and given names."""
    alphabetic = value.split("=", 1)[0]
    components = alphabetic.split("^")
    family = components[0].strip()
    given = [c.strip() for c in components[1:3] if c.strip()]
    return family, given


# Letters Unicode does not decompose, written as a Latin-1 system would.
_LETTERS = str.maketrans(
    {
        "Œ": "OE",
        "œ": "oe",
        "Æ": "AE",
        "æ": "ae",
        "ß": "ss",
        "Ø": "O",
        "ø": "o",
        "Ł": "L",
        "ł": "l",
        "Đ": "D",
        "đ": "d",
    }
)


def fold(text: str) -> str:
    """Case- and accent-insensitive form of `text` for comparisons.

    ``Lévêque`` and ``LEVEQUE`` fold to the same string, as do ``DESŒUVRES``
    and ``DESOEUVRES`` (a Latin-1 archive cannot store Œ); hyphens,
    apostrophes and runs of spaces become one space.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTERS))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    for sep in "-'\u2019":
        stripped = stripped.replace(sep, " ")
    return " ".join(stripped.upper().split())
