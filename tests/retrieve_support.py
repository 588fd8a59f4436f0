"""A small study for the retrieve tests: three series, one of them compressed.

The study is generated (invented patient, 2.25 UIDs) and its first series
re-encoded RLE Lossless, so that a retrieve must keep a compressed transfer
syntax as the site holds it. :data:`RetrieveStudy.syntaxes` is what the cache
must hold afterwards: every SOP Instance UID with its transfer syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from ihe.dicom.archive import Archive
from server.demo.studies import DemoPatient, SeriesSpec, StudySpec, generate_study

PATIENT = DemoPatient(
    "IPP-7001", "HOPITAL_R", "2.999.7.1", "LEFÈVRE", "Gaëlle", "19580412", "F"
)
SERIES = (
    SeriesSpec("CT", "Thorax RLE", 3, 64, 64),
    SeriesSpec("CT", "Abdomen", 2, 64, 64),
    SeriesSpec("MR", "T1", 2, 64, 64),
)


@dataclass(frozen=True)
class RetrieveStudy:
    """The generated study and what a complete retrieve must leave in a cache."""

    study_uid: str
    series_uids: tuple[str, ...]
    files: tuple[Path, ...]
    # SOP Instance UID -> transfer syntax UID, series by series.
    by_series: dict[str, dict[str, str]]

    @property
    def syntaxes(self) -> dict[str, str]:
        """Every instance of the study with its transfer syntax."""
        return {
            uid: ts for series in self.by_series.values() for uid, ts in series.items()
        }

    def only(self, *series_uids: str) -> dict[str, str]:
        """The instances of `series_uids` with their transfer syntaxes."""
        return {
            uid: ts
            for series_uid in series_uids
            for uid, ts in self.by_series[series_uid].items()
        }


def make_study(out_dir: Path, seed: int = 7001) -> RetrieveStudy:
    """Write the study under `out_dir`; the first series RLE Lossless."""
    study = generate_study(
        StudySpec(PATIENT, "20240115", "Bilan d'extension", SERIES), out_dir, seed=seed
    )
    by_series: dict[str, dict[str, str]] = {uid: {} for uid in study.series_uids}
    for path in study.files:
        ds = dcmread(path)
        if ds.SeriesInstanceUID == study.series_uids[0]:
            ds.compress(RLELossless, generate_instance_uid=False)
            ds.save_as(path, enforce_file_format=True)
            ds = dcmread(path)
        by_series[ds.SeriesInstanceUID][ds.SOPInstanceUID] = str(
            ds.file_meta.TransferSyntaxUID
        )
    assert set(by_series[study.series_uids[0]].values()) == {RLELossless}
    assert set(by_series[study.series_uids[1]].values()) == {ExplicitVRLittleEndian}
    return RetrieveStudy(study.study_uid, study.series_uids, study.files, by_series)


def cached_syntaxes(archive: Archive, study_uid: str) -> dict[str, str]:
    """What `archive` indexes for the study: SOP Instance UID -> transfer syntax,
    each file checked to start with a File Meta naming that syntax."""
    found: dict[str, str] = {}
    for row in archive.instances(study_uid=study_uid):
        meta = dcmread(archive.root / row.path, stop_before_pixels=True).file_meta
        assert str(meta.TransferSyntaxUID) == row.transfer_syntax
        found[row.sop_instance_uid] = str(row.transfer_syntax)
    return found
