"""Linking rules of the patient index: what may join two records, and what not."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from sqlalchemy import select

from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import INS_NIR, Identifier
from server.errors import IdentityError
from server.models import Patient, PatientHistory
from server.runtime import Runtime

SITE_A, SITE_B, SITE_C = "2.999.1.1", "2.999.1.2", "2.999.1.3"
NIR = "279089912300175"


def record(
    *identifiers: Identifier,
    status: str | None = None,
    attributes: tuple[str, ...] | None = None,
    birth: date = date(1979, 8, 22),
    sex: str = "F",
) -> PatientRecord:
    return PatientRecord(
        identifiers=identifiers,
        family="FAURE",
        given=("Hélène",),
        birth_date=birth,
        sex=sex,
        identity_status=status,
        identity_attributes=attributes,
    )


def ins() -> Identifier:
    return Identifier(INS_NIR, NIR, "INS")


def feed(rt: Runtime, rec: PatientRecord) -> str:
    with rt.db.session() as session:
        patient_id = patient_index.feed(session, rec, {}).patient.id
        session.commit()
    return patient_id


def patients(rt: Runtime) -> int:
    with rt.db.session() as session:
        return len(list(session.scalars(select(Patient))))


@pytest.mark.parametrize("status", ["VALI", "QUAL"])
def test_feed_trusted_ins_links_two_sites_local_ids(rt: Runtime, status: str) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status=status))
    second = feed(rt, record(Identifier(SITE_B, "B1"), ins(), status=status))
    assert first == second
    with rt.db.session() as session:
        patient = session.get(Patient, first)
        assert patient is not None
        assert [(i.system, i.value) for i in patient.identifiers] == [
            (SITE_A, "A1"),
            (INS_NIR, NIR),
            (SITE_B, "B1"),
        ]
        assert [h.kind for h in patient.history] == ["created", "linked"]


@pytest.mark.parametrize("status", ["PROV", "RECUP", None])
def test_feed_untrusted_ins_links_nothing(rt: Runtime, status: str | None) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status=status))
    second = feed(rt, record(Identifier(SITE_B, "B1"), ins(), status=status))
    assert first != second
    with rt.db.session() as session:
        for patient_id in (first, second):
            patient = session.get(Patient, patient_id)
            assert patient is not None
            assert patient.ins_value == NIR
            assert INS_NIR not in {i.system for i in patient.identifiers}


def test_held_ins_of_a_new_patient_is_logged_with_its_id(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ihe.pix.patient_index")
    created = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="PROV"))
    held = [r for r in caplog.records if r.getMessage() == patient_index.LOG_INS_HELD]
    assert [getattr(r, "patient", None) for r in held] == [created]


@pytest.mark.parametrize("attribute", ["FICT", "DOUT"])
def test_feed_fictitious_or_doubtful_ins_never_links(
    rt: Runtime, attribute: str
) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="VALI"))
    second = feed(
        rt,
        record(Identifier(SITE_B, "B1"), ins(), status="VALI", attributes=(attribute,)),
    )
    assert first != second


@pytest.mark.parametrize("attribute", ["FICT", "DOUT"])
def test_feed_fictitious_identity_with_two_domains_refused(
    rt: Runtime, attribute: str
) -> None:
    with rt.db.session() as session, pytest.raises(IdentityError) as caught:
        patient_index.feed(
            session,
            record(
                Identifier(SITE_A, "A1"),
                Identifier(SITE_B, "B1"),
                attributes=(attribute,),
            ),
            {},
        )
    assert "not linked automatically" in str(caught.value)
    assert patients(rt) == 0


def test_feed_fictitious_patient_gains_no_other_domain(rt: Runtime) -> None:
    feed(rt, record(Identifier(SITE_A, "A1"), attributes=("FICT",)))
    with rt.db.session() as session, pytest.raises(IdentityError):
        patient_index.feed(
            session, record(Identifier(SITE_A, "A1"), Identifier(SITE_C, "C1")), {}
        )
    with rt.db.session() as session:
        row = patient_index.find_patient(session, Identifier(SITE_C, "C1"))
        assert row is None


@pytest.mark.parametrize(
    ("birth", "sex"), [(date(1979, 8, 23), "F"), (date(1979, 8, 22), "M")]
)
def test_feed_ins_collision_on_birth_date_or_sex_refused(
    rt: Runtime, birth: date, sex: str
) -> None:
    feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="VALI"))
    with rt.db.session() as session, pytest.raises(IdentityError) as caught:
        patient_index.feed(
            session,
            record(
                Identifier(SITE_B, "B1"), ins(), status="VALI", birth=birth, sex=sex
            ),
            {},
        )
    assert "identity collision" in str(caught.value)
    assert patients(rt) == 1


def test_feed_status_downgrade_unlinks_the_ins(rt: Runtime) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="VALI"))
    again = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="PROV"))
    assert again == first
    later = feed(rt, record(Identifier(SITE_B, "B1"), ins(), status="VALI"))
    assert later != first
    with rt.db.session() as session:
        kinds = session.scalars(
            select(PatientHistory.kind).where(PatientHistory.patient_id == first)
        )
        assert list(kinds) == ["created", "ins-held"]


def test_name_and_birth_date_alone_never_link(rt: Runtime) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1")))
    second = feed(rt, record(Identifier(SITE_B, "B1")))
    assert first != second


def test_merge_and_change_are_in_the_history(rt: Runtime) -> None:
    survivor = feed(rt, record(Identifier(SITE_A, "A1")))
    absorbed = feed(rt, record(Identifier(SITE_A, "A2")))
    with rt.db.session() as session:
        patient_index.merge(session, Identifier(SITE_A, "A1"), Identifier(SITE_A, "A2"))
        patient_index.change_identifier(
            session, Identifier(SITE_A, "A1"), Identifier(SITE_A, "A9")
        )
        session.commit()
    with rt.db.session() as session:
        rows = session.scalars(select(PatientHistory).order_by(PatientHistory.id))
        events = [
            (h.patient_id, h.kind, h.other_patient_id, h.old_value, h.new_value)
            for h in rows
        ]
    assert events == [
        (survivor, "created", None, None, None),
        (absorbed, "created", None, None, None),
        (survivor, "merged", absorbed, None, None),
        (absorbed, "absorbed", survivor, None, None),
        (survivor, "identifier-changed", None, "A1", "A9"),
    ]


def identifiers_of(rt: Runtime, patient_id: str) -> set[tuple[str, str]]:
    with rt.db.session() as session:
        patient = session.get(Patient, patient_id)
        assert patient is not None
        return {(i.system, i.value) for i in patient.identifiers}


def owner(rt: Runtime, ident: Identifier) -> str:
    with rt.db.session() as session:
        found = patient_index.find_patient(session, ident)
        assert found is not None
        return found.id


def joined_by_ins(rt: Runtime) -> str:
    first = feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="VALI"))
    assert feed(rt, record(Identifier(SITE_B, "B1"), ins(), status="VALI")) == first
    return first


@pytest.mark.parametrize(
    "sent",
    [
        (Identifier(SITE_A, "A1"),),  # site A's own feed
        (),  # the INS alone
    ],
)
def test_downgrade_splits_off_what_the_ins_linked(
    rt: Runtime, sent: tuple[Identifier, ...]
) -> None:
    first = joined_by_ins(rt)
    assert feed(rt, record(*sent, ins(), status="PROV")) == first
    assert identifiers_of(rt, first) == {(SITE_A, "A1")}
    split = owner(rt, Identifier(SITE_B, "B1"))
    assert split != first
    assert identifiers_of(rt, split) == {(SITE_B, "B1")}
    with rt.db.session() as session:
        history = session.scalars(
            select(PatientHistory)
            .where(PatientHistory.patient_id == first)
            .order_by(PatientHistory.id)
        ).all()
        unlinked = [
            (h.system, h.old_value, h.other_patient_id)
            for h in history
            if h.kind == "unlinked"
        ]
        assert unlinked == [(SITE_B, "B1", split)]
        linked = [h.detail for h in history if h.kind == "linked"]
        assert linked == [patient_index.LINKED_BY_INS]


def test_downgrade_sent_by_the_linked_site_updates_the_split_record(
    rt: Runtime,
) -> None:
    first = joined_by_ins(rt)
    later = feed(
        rt,
        record(Identifier(SITE_B, "B1"), ins(), status="PROV", birth=date(1979, 8, 23)),
    )
    assert later != first
    assert identifiers_of(rt, first) == {(SITE_A, "A1")}
    assert identifiers_of(rt, later) == {(SITE_B, "B1")}
    with rt.db.session() as session:
        kept = session.get(Patient, first)
        split = session.get(Patient, later)
        assert kept is not None and split is not None
        assert (kept.birth_date, split.birth_date) == (
            date(1979, 8, 22),
            date(1979, 8, 23),
        )
        assert split.ins_status == "PROV"


def test_downgrade_carrying_both_identifiers_keeps_them_linked(rt: Runtime) -> None:
    first = joined_by_ins(rt)
    again = feed(
        rt,
        record(
            Identifier(SITE_A, "A1"), Identifier(SITE_B, "B1"), ins(), status="PROV"
        ),
    )
    assert again == first
    assert identifiers_of(rt, first) == {(SITE_A, "A1"), (SITE_B, "B1")}
    assert patients(rt) == 1


def test_downgrade_flags_the_studies_found_under_a_split_identifier(
    rt: Runtime,
) -> None:
    from datetime import UTC, datetime, timedelta

    from server import site_directory
    from server.config import Directory, Site
    from server.models import (
        Board,
        Candidate,
        Prefetch,
        PrefetchState,
        Registration,
    )
    from server.workflow.identity_changes import UNLINKED_WARNING
    from server.workflow.vigilance import needs_review

    first = joined_by_ins(rt)
    meeting = datetime.now(UTC) + timedelta(days=5)
    sites = tuple(
        Site(name, name.upper().replace("-", "_"), "127.0.0.1", 104, domain)
        for name, domain in (("site-a", SITE_A), ("site-b", SITE_B))
    )
    site_directory.sync(rt.db, Directory(sites=sites))
    with rt.db.session() as session:
        reg = Registration(
            id="r1",
            status="booked",
            patient_id=first,
            board=Board(location_reference="Location/rcp"),
            meeting_start=meeting,
            discovery="done",
        )
        for site, local, uid in (
            ("site-a", "A1", "2.25.1"),
            ("site-b", "B1", "2.25.2"),
        ):
            cand = Candidate(
                site_name=site,
                study_uid=uid,
                patient_id_at_site=local,
                modalities=["CT"],
                selected=True,
                selected_by="rule",
            )
            cand.prefetch = Prefetch(
                id=f"f-{site}",
                registration_id="r1",
                site_name=site,
                study_uid=uid,
                due_at=meeting - timedelta(days=1),
                state=PrefetchState.SCHEDULED,
            )
            reg.candidates.append(cand)
        session.add(reg)
        session.commit()

    feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="PROV"))

    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        shown = {
            c.site_name: (c.selected, c.warning, needs_review(c), c.prefetch.state)
            for c in reg.candidates
            if c.prefetch is not None
        }
    assert shown == {
        "site-a": (True, None, False, PrefetchState.SCHEDULED),
        "site-b": (False, UNLINKED_WARNING, True, PrefetchState.CANCELLED),
    }
    from click.testing import CliRunner

    from server.cli import main

    env = {"SPIDERS_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "300"}
    lines = CliRunner().invoke(main, ["status"], env=env).output.splitlines()
    assert "  2 studies found at 2 site(s), 1 selected, 1 awaiting identity review" in (
        lines
    )
    (row,) = [x.rstrip() for x in lines if x.startswith("  site-b ")]
    assert row.endswith(
        f"identity review: {UNLINKED_WARNING}; retrieve cancelled: {UNLINKED_WARNING}"
    )


def test_new_identifier_not_linked_while_demographics_change(rt: Runtime) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1")))
    other = PatientRecord(
        identifiers=(Identifier(SITE_A, "A1"), Identifier(SITE_B, "B1")),
        family="BERNARD",
        given=("Luc",),
        birth_date=date(1955, 5, 5),
        sex="M",
    )
    with rt.db.session() as session, pytest.raises(IdentityError) as refused:
        patient_index.feed(session, other, {})
    assert str(refused.value) == (
        "a new identifier is not linked to a patient whose demographics this feed "
        "changes (birth date differs from the patient index; sex differs from the "
        "patient index; family name differs from the patient index; given name "
        "differs from the patient index): send the correction alone first"
    )
    with rt.db.session() as session:
        kept = session.get(Patient, first)
        assert kept is not None
        assert (kept.family_name, kept.birth_date) == ("FAURE", date(1979, 8, 22))
    assert identifiers_of(rt, first) == {(SITE_A, "A1")}
    # The correction alone, then the identifier: both accepted.
    corrected = record(Identifier(SITE_A, "A1"), birth=date(1979, 8, 23))
    assert feed(rt, corrected) == first
    both = record(
        Identifier(SITE_A, "A1"), Identifier(SITE_B, "B1"), birth=date(1979, 8, 23)
    )
    assert feed(rt, both) == first
    assert identifiers_of(rt, first) == {(SITE_A, "A1"), (SITE_B, "B1")}


def test_downgrade_splits_an_identifier_renamed_since_it_was_linked(
    rt: Runtime,
) -> None:
    first = joined_by_ins(rt)
    with rt.db.session() as session:
        patient_index.change_identifier(
            session, Identifier(SITE_B, "B1"), Identifier(SITE_B, "B2")
        )
        session.commit()
    assert feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="PROV")) == first
    assert identifiers_of(rt, first) == {(SITE_A, "A1")}
    assert identifiers_of(rt, owner(rt, Identifier(SITE_B, "B2"))) == {(SITE_B, "B2")}


def test_split_patient_reads_as_a_whole_fhir_patient(rt: Runtime) -> None:
    first = joined_by_ins(rt)
    with rt.db.session() as session:
        patient = session.get(Patient, first)
        assert patient is not None
        patient.resource = {
            "resourceType": "Patient",
            "id": first,
            "name": [{"family": "FAURE", "given": ["Hélène"]}],
            "gender": "female",
            "birthDate": "1979-08-22",
        }
    feed(rt, record(Identifier(SITE_A, "A1"), ins(), status="PROV"))
    split = owner(rt, Identifier(SITE_B, "B1"))
    with rt.db.session() as session:
        patient = session.get(Patient, split)
        assert patient is not None
        resource = dict(patient.resource)
    assert resource["resourceType"] == "Patient"
    assert resource["id"] == split
    assert resource["meta"]["versionId"] == "1"
    assert (resource["name"], resource["gender"], resource["birthDate"]) == (
        [{"family": "FAURE", "given": ["Hélène"]}],
        "female",
        "1979-08-22",
    )


def test_traits_left_out_of_a_feed_are_kept(rt: Runtime) -> None:
    first = feed(rt, record(Identifier(SITE_A, "A1")))
    bare = PatientRecord(identifiers=(Identifier(SITE_A, "A1"),))
    assert feed(rt, bare) == first
    with rt.db.session() as session:
        patient = session.get(Patient, first)
        assert patient is not None
        assert (
            patient.family_name,
            patient.given_names,
            patient.birth_date,
            patient.sex,
        ) == ("FAURE", "Hélène", date(1979, 8, 22), "F")
