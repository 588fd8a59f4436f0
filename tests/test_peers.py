"""The real-peer helpers in ``tests/peers.py`` work against the real peers.

The protocol tests share one Orthanc holding one generated CT study (Orthanc starts in
a fraction of a second but takes about 3.5 s to shut down gracefully) and check
through dcmtk, the way a console sees it, that it answers as SPIDERS' tests expect.
The life-cycle tests start their own.
"""

import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.peers import OrthancPeer, StoreSCP, require, run_dcmtk

CONSOLE_AET = "CONSOLE"
# One element of a dataset dump as dcmtk prints it: (0020,000d) UI [1.2.3] # ...
DUMP_ELEMENT = re.compile(r"\(([0-9a-f]{4}),([0-9a-f]{4})\) \w\w \[(.*?)\]")
STUDY_INSTANCE_UID = "0020,000d"
NUMBER_OF_STUDY_RELATED_INSTANCES = "0020,1208"


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-instance CT study: 8x8 pixels, Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SPIDERS-TEST-1"
    ds.PatientName = "Test^Peers"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint16).reshape(8, 8).tobytes()

    path = tmp_path_factory.mktemp("dicom") / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)

    return path


@pytest.fixture(scope="module")
def orthanc(ct_file: Path) -> Iterator[OrthancPeer]:
    """A private Orthanc with DICOMweb, holding the study of ``ct_file``."""
    with OrthancPeer(dicomweb=True) as peer:
        peer.upload([ct_file])
        yield peer


def study_uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def find_responses(stderr: str) -> list[dict[str, str]]:
    """Split findscu's stderr into response datasets: tag "gggg,eeee" -> value."""
    responses: list[dict[str, str]] = []
    for line in stderr.splitlines():
        if "Find Response:" in line:
            responses.append({})
            continue
        match = DUMP_ELEMENT.search(line)
        if match and responses:
            group, element, value = match.groups()
            # UI values are padded to even length with NUL (PS3.5 6.2).
            responses[-1][f"{group},{element}"] = value.strip(" \x00")

    return responses


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_require_missing_binary_no_ci_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="Debian package none"):
        require("definitely-not-a-binary", "none")


def test_require_missing_binary_under_ci_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception) as info:
        require("definitely-not-a-binary", "none")
    assert (
        str(info.value) == "definitely-not-a-binary not installed (Debian package none)"
    )


@pytest.mark.peer
def test_require_present_binary_returns_system_path() -> None:
    path = require("findscu", "dcmtk")

    # dcmtk's, not pynetdicom's console script of the same name in the venv.
    assert Path(path).is_absolute()
    assert not path.startswith(sys.prefix)


@pytest.mark.peer
def test_orthanc_peer_c_echo_succeeds(orthanc: OrthancPeer) -> None:
    result = run_dcmtk(
        "echoscu",
        "-aet", CONSOLE_AET,
        "-aec", orthanc.aet,
        "127.0.0.1", str(orthanc.dicom_port),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr


@pytest.mark.peer
def test_orthanc_peer_uploaded_study_counted(
    orthanc: OrthancPeer, ct_file: Path
) -> None:
    assert orthanc.study_count() == 1
    assert orthanc.instances_of_study(study_uid_of(ct_file)) == 1
    assert orthanc.instances_of_study("1.2.3.4") == 0


@pytest.mark.peer
def test_orthanc_peer_study_c_find_one_instance(
    orthanc: OrthancPeer, ct_file: Path
) -> None:
    study_uid = study_uid_of(ct_file)

    result = run_dcmtk(
        "findscu", "-S",
        "-aet", CONSOLE_AET,
        "-aec", orthanc.aet,
        "127.0.0.1", str(orthanc.dicom_port),
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={study_uid}",
        "-k", "NumberOfStudyRelatedInstances",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    responses = find_responses(result.stderr)
    assert [r[STUDY_INSTANCE_UID] for r in responses] == [study_uid]
    assert responses[0][NUMBER_OF_STUDY_RELATED_INSTANCES] == "1"


@pytest.mark.peer
def test_orthanc_peer_c_move_to_storescp_delivers_study(
    orthanc: OrthancPeer, ct_file: Path
) -> None:
    with StoreSCP(aet="DEST") as scp:
        orthanc.add_modality("dest", scp.aet, "127.0.0.1", scp.port)
        result = run_dcmtk(
            "movescu", "-S",
            "-aet", CONSOLE_AET,
            "-aec", orthanc.aet,
            "-aem", scp.aet,
            "127.0.0.1", str(orthanc.dicom_port),
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid_of(ct_file)}",
        )  # fmt: skip
        received = scp.files()

        assert result.returncode == 0, result.stderr
        assert len(received) == 1
        assert study_uid_of(received[0]) == study_uid_of(ct_file)


@pytest.mark.peer
def test_orthanc_peer_dicomweb_qido_lists_study(
    orthanc: OrthancPeer, ct_file: Path
) -> None:
    url = f"{orthanc.url}/dicom-web/studies"
    with urllib.request.urlopen(url, timeout=10) as response:
        studies = json.loads(response.read())

    assert [s["0020000D"]["Value"] for s in studies] == [[study_uid_of(ct_file)]]


@pytest.mark.peer
def test_orthanc_peer_context_exit_process_gone(ct_file: Path) -> None:
    with OrthancPeer() as orthanc:
        assert orthanc.upload([ct_file]) == 1
        pid = orthanc.pid
        assert pid is not None and process_exists(pid)

    assert not process_exists(pid)
    assert orthanc.pid is None


@pytest.mark.peer
def test_orthanc_peer_error_in_context_process_gone() -> None:
    pid = None

    with pytest.raises(RuntimeError, match="boom"), OrthancPeer() as orthanc:
        pid = orthanc.pid
        raise RuntimeError("boom")

    assert pid is not None and not process_exists(pid)


@pytest.mark.peer
def test_orthanc_peer_dies_at_start_error_has_log_tail() -> None:
    too_long = "AN-AE-TITLE-TOO-LONG"

    with (
        pytest.raises(RuntimeError, match="longer than 16 characters"),
        OrthancPeer(aet=too_long),
    ):
        pass


@pytest.mark.peer
def test_storescp_context_exit_process_gone() -> None:
    with StoreSCP() as scp:
        pid = scp.pid
        assert pid is not None and process_exists(pid)
        assert scp.files() == []

    assert not process_exists(pid)
