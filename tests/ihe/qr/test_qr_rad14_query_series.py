"""SERIES-level C-FIND against a real Orthanc: the counts a retrieve is judged by."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihe.qr.rad14_query_images import query_series
from server.demo import scenario
from server.demo.studies import DemoPatient, SeriesSpec, StudySpec, generate_study
from tests.peers import OrthancPeer

pytestmark = pytest.mark.peer


def test_query_series_orthanc_counts_each_series_exactly(tmp_path: Path) -> None:
    site = scenario.site("clinique-sud")
    spec = StudySpec(
        patient=DemoPatient(
            "SUD-1", site.issuer, site.domain, "MARTIN", "Anne", "19600101", "F"
        ),
        study_date="20250110",
        description="TDM thorax",
        series=(
            SeriesSpec("CT", "Thorax", 7, 16, 16),
            SeriesSpec("CT", "Parenchyme", 3, 16, 16),
        ),
    )
    study = generate_study(spec, tmp_path, seed=4242)
    with OrthancPeer(aet="CLIN_SUD") as orthanc:
        orthanc.upload(study.files)
        found = query_series(
            calling_ae="SPIDERS",
            ae_title="CLIN_SUD",
            host="127.0.0.1",
            port=orthanc.dicom_port,
            study_uid=study.study_uid,
            timeout=10,
        )
        unknown = query_series(
            calling_ae="SPIDERS",
            ae_title="CLIN_SUD",
            host="127.0.0.1",
            port=orthanc.dicom_port,
            study_uid="2.25.1",
            timeout=10,
        )
    assert found == {study.series_uids[0]: 7, study.series_uids[1]: 3}
    assert unknown == {}
