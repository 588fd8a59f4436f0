"""Merges and identifier changes reach candidates, the cache index and discovery."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.config import Directory, Settings, Site
from server.models import Board, CachedInstance, Candidate, Registration
from server.runtime import Runtime
from server.workflow import identity_changes

A, B = "2.999.72.1", "2.999.72.2"
SITES = Directory(
    sites=(
        Site("site-a", "SITE_A", "127.0.0.1", 1, A),
        Site("site-b", "SITE_B", "127.0.0.1", 2, B),
    )
)


def seeded(settings: Settings) -> Runtime:
    rt = Runtime(replace(settings, directory=SITES))
    with rt.db.session() as session:
        for value, system in (("A1", A), ("A2", A), ("B9", B)):
            patient_index.feed(
                session, PatientRecord(identifiers=(Identifier(system, value),)), {}
            )
        patient = patient_index.find_patient(session, Identifier(A, "A2"))
        assert patient is not None
        reg = Registration(
            id="r1",
            status="booked",
            patient=patient,
            board=Board(location_reference="Location/rcp"),
            meeting_start=datetime.now(UTC) + timedelta(days=3),
            discovery="done",
        )
        reg.candidates = [
            Candidate(site_name="site-a", study_uid="1.2.1", patient_id_at_site="A2"),
            Candidate(site_name="site-b", study_uid="1.2.2", patient_id_at_site="A2"),
        ]
        session.add(reg)
        for uid, ae, pid in (("1.3.1", "SITE_A", "A2"), ("1.3.2", "SITE_B", "A2")):
            session.add(
                CachedInstance(
                    sop_instance_uid=uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid="1.2.1",
                    series_uid="1.2.1.1",
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=uid,
                    size=1,
                    source_ae=ae,
                    patient_id=pid,
                )
            )
    return rt


def state(rt: Runtime) -> tuple[list[str], list[str], str, str]:
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        cands = [c.patient_id_at_site for c in reg.candidates]
        cached = [
            c.patient_id or ""
            for c in session.query(CachedInstance).order_by(CachedInstance.id)
        ]
        return cands, cached, reg.discovery, reg.patient_id


def test_merge_relabels_site_domain_only_and_rediscovers(settings: Settings) -> None:
    rt = seeded(settings)
    with rt.db.session() as session:
        result = patient_index.merge(session, Identifier(A, "A1"), Identifier(A, "A2"))
        assert result.absorbed is not None
        counts = identity_changes.after_merge(
            session, rt.settings, result.survivor, result.absorbed.id
        )
        survivor_id = result.survivor.id
    assert counts == {"candidates": 1, "cached_instances": 1, "rediscover": 1}
    # Site B's rows are in another domain: an "A2" there is someone else's.
    assert state(rt) == (["A1", "A2"], ["A1", "A2"], "pending", survivor_id)


def test_identifier_change_relabels_candidates_and_cache(settings: Settings) -> None:
    rt = seeded(settings)
    with rt.db.session() as session:
        old = Identifier(A, "A2")
        patient = patient_index.change_identifier(session, old, Identifier(A, "A2X"))
        counts = identity_changes.after_identifier_change(
            session, rt.settings, patient, old, "A2X"
        )
    assert counts == {"candidates": 1, "cached_instances": 1}
    cands, cached, discovery, _ = state(rt)
    assert (cands, cached, discovery) == (["A2X", "A2"], ["A2X", "A2"], "done")
