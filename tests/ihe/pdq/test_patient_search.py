"""The shared demographic search on both databases SPIDERS runs on.

The folded (case- and accent-insensitive) match and the verbatim match of
PDQm's ``:exact`` must give the same answers on the embedded SQLite and on
PostgreSQL, whose ``LIKE`` and substring functions differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from ihe.pdq.patient_search import PatientQuery, search
from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.db import Database

QUERIES: list[tuple[PatientQuery, list[str]]] = [
    (PatientQuery(family="leveque"), ["A1"]),
    (PatientQuery(family="LEV", exact=False), ["A1", "A3"]),
    (PatientQuery(family="Lévêque", exact=True, verbatim=True), ["A1"]),
    (PatientQuery(family="LEVEQUE", exact=True, verbatim=True), []),
    (PatientQuery(given="helene"), ["A1", "A2"]),
    (PatientQuery(given="Hélène", exact=True, verbatim=True), ["A1", "A2"]),
    (PatientQuery(given="HÉLÈNE", exact=True, verbatim=True), []),
    (PatientQuery(given="Anne", exact=True, verbatim=True), ["A2"]),
    (PatientQuery(given="Ann", exact=True, verbatim=True), []),
    (PatientQuery(given="Anne Hélène", exact=True, verbatim=True), ["A2"]),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'spiders.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = Database(url)
    database.create_schema()
    with database.session() as session:
        for local_id, family, given in (
            ("A1", "Lévêque", ("Hélène",)),
            ("A2", "MARTIN", ("Anne", "Hélène")),
            ("A3", "LEVEQUES", ("Marc",)),
        ):
            record = PatientRecord(
                identifiers=(Identifier("2.999.1.1", local_id),),
                family=family,
                given=given,
                birth_date=date(1960, 1, 2),
                sex="F",
            )
            patient_index.feed(session, record, {})
        session.commit()
    yield database
    database.engine.dispose()


@pytest.mark.parametrize(("query", "found"), QUERIES)
def test_search_same_answer_on_both_databases(
    db: Database, query: PatientQuery, found: list[str]
) -> None:
    with db.session() as session:
        patients = search(session, query)
        local_ids = sorted(i.value for p in patients for i in p.identifiers)
    assert local_ids == found
