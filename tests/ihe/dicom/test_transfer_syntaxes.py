"""Field case C15: a console that does not accept JPEG 2000.

Scenarios A, B and C of ``C15-jpeg2000-not-accepted.json`` run against a
pynetdicom Storage SCP accepting exactly the contexts the case describes (the
console), once directly on an association and once through the cache's C-MOVE.
dcmtk's ``storescp``, which accepts only uncompressed syntaxes by default, is the
console of the end-to-end tests, with ``movescu`` and ``getscu`` asking.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom import transfer_syntaxes
from ihe.dicom.archive import Archive
from ihe.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelMove,
)
from ihe.dicom.transfer_syntaxes import (
    LOG_NOT_SENT,
    MAX_CONTEXTS,
    prepare,
    propose_contexts,
)
from tests.ihe.dicom.dicom_support import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    CacheServer,
    cache_server,
    encode,
    open_archive,
)
from tests.peers import LOCALHOST, StoreSCP, free_port, require, run_dcmtk

CASE = json.loads(
    (
        Path(__file__).parents[2] / "data" / "dicom" / "C15-jpeg2000-not-accepted.json"
    ).read_text(encoding="utf-8")
)
A = CASE["negotiation_A_both_contexts_proposed"]
B = CASE["negotiation_B_decoder_unavailable"]
CASE_SOP_UID = CASE["instance"]["SOPInstanceUID"]
J2K = CASE["instance"]["TransferSyntaxUID"]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = [EXPLICIT_LE, IMPLICIT_LE]
STUDY_UID = "2.999.15.1"
SERIES_UID = "2.999.15.2"
OTHER_SOP_UID = "2.999.15.1.2"
CONSOLE_AE = "RCP_CONSOLE"
VIEWER_AE = "VIEWER"
SCU_TIMEOUT = 60


# The instances: small invented CTs, 64x64, 16 bits.


def ct_pixels(seed: int) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """A 64x64 image with CT-like values, different for each seed."""
    rng = np.random.default_rng(seed)

    return rng.integers(0, 4096, size=(64, 64), dtype=np.uint16)


def ct_instance(sop_uid: str, seed: int, *, instance_number: int = 1) -> Dataset:
    """An uncompressed CT instance of the C15 study."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientID = "RCP-015"
    ds.PatientName = "BÉRANGER^Maëlle"
    ds.PatientBirthDate = "19620704"
    ds.PatientSex = "F"
    ds.StudyDate = "20250312"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = ct_pixels(seed).tobytes()

    return ds


def compressed(ds: Dataset, syntax: str, **kwargs: Any) -> Dataset:
    """A copy of `ds` encoded in `syntax`, same SOP Instance UID; `kwargs` are
    the encoder's options (lossless without any)."""
    encoded = copy.deepcopy(ds)
    encoded.compress(syntax, generate_instance_uid=False, **kwargs)

    return encoded


def store(archive: Archive, ds: Dataset) -> Path:
    """Put `ds` in the archive as a site would; return its file."""
    stored = archive.store(
        encode(ds), ds, str(ds.file_meta.TransferSyntaxUID), "PACS_NORD"
    )

    return Path(stored.path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The console: a pynetdicom Storage SCP accepting exactly the given syntaxes.


@dataclass
class Received:
    """One C-STORE as the console saw it."""

    context_id: int
    transfer_syntax: str
    sop_instance_uid: str
    dataset: Dataset


@dataclass
class Console:
    """A Storage SCP on loopback and what it saw."""

    port: int
    server: ThreadedAssociationServer
    received: list[Received] = field(default_factory=list)
    proposed: list[tuple[int, str, list[str]]] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)


@contextmanager
def console(syntaxes: list[str]) -> Iterator[Console]:
    """A console accepting CT and MR storage in `syntaxes` only."""
    ae = AE(ae_title=VIEWER_AE)
    for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_supported_context(sop_class, syntaxes)
    port = free_port()
    seen = Console(port, None)  # type: ignore[arg-type]

    def handle_established(event: Event) -> None:
        for cx in event.assoc.requestor.requested_contexts:
            seen.proposed.append(
                (cx.context_id, str(cx.abstract_syntax), list(cx.transfer_syntax))
            )
        for cx in event.assoc.rejected_contexts:
            seen.rejected.append((cx.context_id, cx.result))

    def handle_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        seen.received.append(
            Received(
                event.context.context_id,
                str(event.context.transfer_syntax),
                str(ds.SOPInstanceUID),
                ds,
            )
        )
        return 0x0000

    server = ae.start_server(
        (LOCALHOST, port),
        block=False,
        evt_handlers=[
            (evt.EVT_ESTABLISHED, handle_established),
            (evt.EVT_C_STORE, handle_store),
            (evt.EVT_RELEASED, lambda event: seen.endings.append("released")),
            (evt.EVT_ABORTED, lambda event: seen.endings.append("aborted")),
        ],
    )
    assert server is not None
    seen.server = server
    try:
        yield seen
    finally:
        server.shutdown()


def c_move(cache: CacheServer, destination: str) -> list[tuple[Dataset, Any]]:
    """C-MOVE the C15 study to `destination`; every response, in order."""
    ae = AE(ae_title=CONSOLE_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = STUDY_UID
    assoc = ae.associate(LOCALHOST, cache.port, ae_title=cache.ae_title)
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        )
    finally:
        assoc.release()

    return responses


@dataclass
class Filled:
    """The cache, its archive and the files of the C15 study."""

    cache: CacheServer
    archive: Archive
    files: dict[str, Path]
    pixels: dict[str, bytes]


@contextmanager
def filled_cache(tmp_path: Path, instances: list[Dataset]) -> Iterator[Filled]:
    """The cache's listener over an archive holding `instances`."""
    archive, db = open_archive(tmp_path)
    files = {str(ds.SOPInstanceUID): store(archive, ds) for ds in instances}
    pixels = {
        str(ds.SOPInstanceUID): dcmread(files[str(ds.SOPInstanceUID)])
        .pixel_array.astype(np.uint16)
        .tobytes()
        for ds in instances
    }
    try:
        with cache_server(archive) as cache:
            yield Filled(cache, archive, files, pixels)
    finally:
        db.dispose()


@pytest.fixture
def j2k_instance() -> Dataset:
    """The case's instance: CT, SOP Instance UID 2.999.15.1.1, JPEG 2000 lossless."""
    ds = compressed(ct_instance(CASE_SOP_UID, seed=15), J2K)
    assert str(ds.file_meta.TransferSyntaxUID) == J2K

    return ds


def _proposed_in_case(scenario: dict[str, Any]) -> list[tuple[int, str, list[str]]]:
    return [
        (cx["id"], cx["abstract_syntax"], cx["transfer_syntaxes"])
        for cx in scenario["proposed"]
    ]


# Scenario C: what the cache proposes.


def test_propose_contexts_case_c_own_syntax_and_uncompressed_exact() -> None:
    contexts = propose_contexts([(CT_IMAGE_STORAGE, J2K)])
    # pynetdicom numbers requested contexts 1, 3, 5... in list order.
    proposed = [
        (2 * i + 1, str(cx.abstract_syntax), list(cx.transfer_syntax))
        for i, cx in enumerate(contexts)
    ]

    assert proposed == _proposed_in_case(A)


def test_propose_contexts_several_classes_grouped_by_class() -> None:
    contexts = propose_contexts(
        [
            (CT_IMAGE_STORAGE, J2K),
            (MR_IMAGE_STORAGE, RLELossless),
            (CT_IMAGE_STORAGE, EXPLICIT_LE),
            (CT_IMAGE_STORAGE, J2K),
        ]
    )

    assert [(str(cx.abstract_syntax), cx.transfer_syntax) for cx in contexts] == [
        (CT_IMAGE_STORAGE, [J2K]),
        (CT_IMAGE_STORAGE, UNCOMPRESSED),
        (MR_IMAGE_STORAGE, [RLELossless]),
        (MR_IMAGE_STORAGE, UNCOMPRESSED),
    ]


def test_propose_contexts_over_128_uncompressed_first_then_most_frequent() -> None:
    sop_classes = [f"2.999.15.7.{n}" for n in range(100)]
    batch = [(sop, J2K) for sop in sop_classes]
    # The RLE instances of the last 30 classes outnumber their J2K ones.
    batch += [(sop, RLELossless) for sop in sop_classes[70:] for _ in range(2)]
    contexts = propose_contexts(batch)
    own = [(str(cx.abstract_syntax), cx.transfer_syntax[0]) for cx in contexts]

    assert len(contexts) == MAX_CONTEXTS
    assert sum(cx.transfer_syntax == UNCOMPRESSED for cx in contexts) == 100
    assert {ts for _, ts in own if ts not in UNCOMPRESSED} == {RLELossless}
    assert sorted(sop for sop, ts in own if ts == RLELossless) == sorted(
        sop_classes[70:98]
    )


def test_propose_contexts_more_classes_than_128_every_context_uncompressed() -> None:
    batch = [(f"2.999.15.8.{n}", J2K) for n in range(130)]
    contexts = propose_contexts(batch)

    assert len(contexts) == MAX_CONTEXTS
    assert all(cx.transfer_syntax == UNCOMPRESSED for cx in contexts)


# Scenario A on one association: both contexts proposed, only uncompressed accepted.


def test_prepare_case_a_sent_decoded_on_context_3_status_0000(
    tmp_path: Path, j2k_instance: Dataset
) -> None:
    archive, db = open_archive(tmp_path)
    path = store(archive, j2k_instance)
    before = sha256(path)
    original = ct_pixels(15).tobytes()
    with console(UNCOMPRESSED) as viewer:
        ae = AE(ae_title="SPIDERS")
        assoc = ae.associate(
            LOCALHOST,
            viewer.port,
            ae_title=VIEWER_AE,
            contexts=propose_contexts([(CT_IMAGE_STORAGE, J2K)]),
        )
        assert assoc.is_established
        try:
            outgoing = prepare(dcmread(path), assoc.accepted_contexts)
            status = assoc.send_c_store(outgoing.dataset)
        finally:
            assoc.release()
    db.dispose()
    expected = A["expected"]

    assert viewer.proposed == _proposed_in_case(A)
    assert viewer.rejected == [
        (answer["id"], answer["result"])
        for answer in A["peer_answer"]
        if answer["result"] != 0
    ]
    assert outgoing.error is None
    assert outgoing.decoded is True
    assert outgoing.context_id == expected["sent_on_context_id"]
    assert outgoing.transfer_syntax == expected["sent_transfer_syntax"]
    assert f"0x{int(status.Status):04X}" == expected["c_store_status"]
    [got] = viewer.received
    assert got.context_id == expected["sent_on_context_id"]
    assert got.transfer_syntax == expected["sent_transfer_syntax"]
    assert got.sop_instance_uid == CASE_SOP_UID
    assert got.dataset.PixelData == original
    assert "LossyImageCompression" not in got.dataset
    assert str(dcmread(path).file_meta.TransferSyntaxUID) == J2K
    assert sha256(path) == before


# Scenario B: same negotiation, no JPEG 2000 decoder.


def test_prepare_case_b_no_decoder_error_names_syntax_nothing_to_send(
    monkeypatch: pytest.MonkeyPatch, j2k_instance: Dataset
) -> None:
    monkeypatch.setattr(transfer_syntaxes, "can_decode", lambda syntax: False)
    uncompressed_only = PresentationContext()
    uncompressed_only.context_id = 3
    uncompressed_only.abstract_syntax = CT_IMAGE_STORAGE
    uncompressed_only.transfer_syntax = [EXPLICIT_LE]
    uncompressed_only._as_scu = True

    outgoing = prepare(j2k_instance, [uncompressed_only])

    assert outgoing.context_id is None
    assert outgoing.transfer_syntax is None
    assert outgoing.error is not None
    for text in B["expected"]["error_mentions"]:
        assert text in outgoing.error
    # Only the UID goes to pynetdicom, which counts the failure and sends nothing.
    assert [elem.keyword for elem in outgoing.dataset] == ["SOPInstanceUID"]
    assert outgoing.dataset.SOPInstanceUID == CASE_SOP_UID


def test_qr_scp_move_case_b_instance_failed_others_sent_not_aborted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    j2k_instance: Dataset,
) -> None:
    monkeypatch.setattr(transfer_syntaxes, "can_decode", lambda syntax: False)
    other = ct_instance(OTHER_SOP_UID, seed=16, instance_number=2)
    with (
        filled_cache(tmp_path, [j2k_instance, other]) as filled,
        console(UNCOMPRESSED) as viewer,
        caplog.at_level(logging.WARNING, logger="ihe.dicom.transfer_syntaxes"),
    ):
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, viewer.port)
        responses = c_move(filled.cache, VIEWER_AE)
    final, identifier = responses[-1]
    expected = B["expected"]

    assert expected["instance_result"] == "failed"
    assert int(final.Status) == 0xB000
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 1
    assert identifier.FailedSOPInstanceUIDList == CASE_SOP_UID
    assert expected["other_instances_in_batch_still_sent"] is True
    assert [r.sop_instance_uid for r in viewer.received] == [OTHER_SOP_UID]
    assert expected["association_aborted"] is False
    assert viewer.endings == ["released"]
    [record] = [r for r in caplog.records if r.getMessage() == LOG_NOT_SENT]
    assert record.levelno == logging.WARNING
    for text in expected["error_mentions"]:
        assert text in record.__dict__["error"]
    assert "BÉRANGER" not in caplog.text and "RCP-015" not in caplog.text


# Scenario A and C through the cache's C-MOVE.


def test_qr_scp_move_case_a_uncompressed_console_gets_decoded_pixels(
    tmp_path: Path, j2k_instance: Dataset
) -> None:
    with (
        filled_cache(tmp_path, [j2k_instance]) as filled,
        console(UNCOMPRESSED) as viewer,
    ):
        path = filled.files[CASE_SOP_UID]
        before = sha256(path)
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, viewer.port)
        responses = c_move(filled.cache, VIEWER_AE)
    final, _ = responses[-1]
    expected = A["expected"]

    assert int(final.Status) == 0x0000
    assert final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfFailedSuboperations == 0
    assert viewer.proposed == _proposed_in_case(A)
    assert viewer.rejected == [(1, 4)]
    [got] = viewer.received
    assert got.context_id == expected["sent_on_context_id"]
    assert got.transfer_syntax == expected["sent_transfer_syntax"]
    assert got.dataset.PixelData == ct_pixels(15).tobytes()
    assert got.sop_instance_uid == CASE_SOP_UID
    assert str(dcmread(path).file_meta.TransferSyntaxUID) == J2K
    assert sha256(path) == before
    assert viewer.endings == ["released"]


def test_qr_scp_move_case_c_j2k_console_gets_stored_bytes_on_context_1(
    tmp_path: Path, j2k_instance: Dataset
) -> None:
    with (
        filled_cache(tmp_path, [j2k_instance]) as filled,
        console([J2K, *UNCOMPRESSED]) as viewer,
    ):
        stored = dcmread(filled.files[CASE_SOP_UID])
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, viewer.port)
        responses = c_move(filled.cache, VIEWER_AE)
    final, _ = responses[-1]

    assert int(final.Status) == 0x0000
    assert viewer.proposed == _proposed_in_case(A)
    assert viewer.rejected == []
    [got] = viewer.received
    assert (got.context_id, got.transfer_syntax) == (1, J2K)
    assert got.dataset.PixelData == stored.PixelData


def test_prepare_encapsulated_pixels_labelled_uncompressed_never_sent(
    j2k_instance: Dataset,
) -> None:
    j2k_instance.file_meta.TransferSyntaxUID = EXPLICIT_LE
    native = PresentationContext()
    native.context_id = 3
    native.abstract_syntax = CT_IMAGE_STORAGE
    native.transfer_syntax = [EXPLICIT_LE]
    native._as_scu = True

    outgoing = prepare(j2k_instance, [native])

    assert outgoing.context_id is None
    assert outgoing.error is not None
    assert "no accepted presentation context" in outgoing.error
    assert "PixelData" not in outgoing.dataset


def jpeg_baseline_instance(tmp_path: Path, sop_uid: str) -> Dataset:
    """An 8-bit CT of the study encoded JPEG baseline by dcmtk's ``dcmcjpeg``,
    which marks it lossy (0028,2110 ``01``); the SOP Instance UID is kept."""
    ds = ct_instance(sop_uid, seed=50, instance_number=5)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = (ct_pixels(50) // 16).astype(np.uint8).tobytes()
    source, target = tmp_path / "u8.dcm", tmp_path / "jpeg8.dcm"
    ds.save_as(source, enforce_file_format=True)
    proc = run_dcmtk("dcmcjpeg", "+eb", "+un", str(source), str(target))
    assert proc.returncode == 0, proc.stderr
    encoded = dcmread(target)
    assert str(encoded.file_meta.TransferSyntaxUID) == JPEGBaseline8Bit

    return encoded


@pytest.mark.peer
def test_prepare_jpeg_baseline_without_lossy_flag_marked_01_uid_kept(
    tmp_path: Path,
) -> None:
    ds = jpeg_baseline_instance(tmp_path, "2.999.15.3.1")
    del ds.LossyImageCompression
    del ds.LossyImageCompressionMethod
    native = PresentationContext()
    native.context_id = 3
    native.abstract_syntax = CT_IMAGE_STORAGE
    native.transfer_syntax = [EXPLICIT_LE]
    native._as_scu = True

    outgoing = prepare(ds, [native])

    assert outgoing.error is None
    assert outgoing.decoded is True
    assert outgoing.dataset.LossyImageCompression == "01"
    assert outgoing.dataset.LossyImageCompressionMethod == "ISO_10918_1"
    assert outgoing.dataset.SOPInstanceUID == "2.999.15.3.1"
    assert str(outgoing.dataset.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert not outgoing.dataset["PixelData"].is_undefined_length


# End to end: dcmtk consoles accepting only uncompressed syntaxes.


def movescu(cache: CacheServer, destination: str) -> Any:
    """dcmtk's ``movescu`` asking the cache to send the C15 study."""
    return run_dcmtk(
        "movescu",
        "-S",
        "-aet",
        CONSOLE_AE,
        "-aec",
        cache.ae_title,
        "-aem",
        destination,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={STUDY_UID}",
        LOCALHOST,
        str(cache.port),
        timeout=SCU_TIMEOUT,
    )


@pytest.mark.peer
def test_movescu_j2k_study_storescp_uncompressed_gets_original_pixels(
    tmp_path: Path,
) -> None:
    require("movescu", "dcmtk")
    originals = {
        f"2.999.15.1.{n}": ct_instance(
            f"2.999.15.1.{n}", seed=20 + n, instance_number=n
        )
        for n in (1, 2, 3)
    }
    j2k = [compressed(ds, J2K) for ds in originals.values()]
    with (
        filled_cache(tmp_path, j2k) as filled,
        StoreSCP(aet=VIEWER_AE) as storescp,
    ):
        before = {uid: sha256(path) for uid, path in filled.files.items()}
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, storescp.port)
        proc = movescu(filled.cache, VIEWER_AE)
        received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, storescp.files())}
        after = {uid: sha256(path) for uid, path in filled.files.items()}
        kept = {
            str(dcmread(p).file_meta.TransferSyntaxUID) for p in filled.files.values()
        }

    assert proc.returncode == 0, proc.stderr
    assert sorted(received) == sorted(originals)
    for uid, ds in received.items():
        assert str(ds.file_meta.TransferSyntaxUID) == EXPLICIT_LE
        assert ds.PixelData == originals[uid].PixelData
        assert np.array_equal(ds.pixel_array, originals[uid].pixel_array)
    assert after == before
    assert kept == {J2K}


@pytest.mark.peer
def test_getscu_j2k_study_uncompressed_console_gets_original_pixels(
    tmp_path: Path,
) -> None:
    require("getscu", "dcmtk")
    original = ct_instance(CASE_SOP_UID, seed=15)
    output = tmp_path / "getscu"
    output.mkdir()
    with filled_cache(tmp_path, [compressed(original, J2K)]) as filled:
        proc = run_dcmtk(
            "getscu",
            "-S",
            "-aet",
            CONSOLE_AE,
            "-aec",
            filled.cache.ae_title,
            "-od",
            str(output),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={STUDY_UID}",
            LOCALHOST,
            str(filled.cache.port),
            timeout=SCU_TIMEOUT,
        )
    files = sorted(path for path in output.rglob("*") if path.is_file())

    assert proc.returncode == 0, proc.stderr
    [received] = [dcmread(path) for path in files]
    assert received.SOPInstanceUID == CASE_SOP_UID
    # getscu's storage contexts are accepted in Implicit VR Little Endian: the
    # decoded dataset is re-encoded into it, pixels untouched.
    assert str(received.file_meta.TransferSyntaxUID) == IMPLICIT_LE
    assert received.PixelData == original.PixelData


@pytest.mark.peer
def test_movescu_jpeg_baseline_storescp_gets_lossy_flag_and_same_uid(
    tmp_path: Path,
) -> None:
    require("movescu", "dcmtk")
    jpeg = jpeg_baseline_instance(tmp_path, "2.999.15.4.1")
    with (
        filled_cache(tmp_path, [jpeg]) as filled,
        StoreSCP(aet=VIEWER_AE) as storescp,
    ):
        decoded = filled.pixels["2.999.15.4.1"]
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, storescp.port)
        proc = movescu(filled.cache, VIEWER_AE)
        [received] = [dcmread(path) for path in storescp.files()]

    assert proc.returncode == 0, proc.stderr
    assert received.SOPInstanceUID == "2.999.15.4.1"
    assert str(received.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert received.LossyImageCompression == "01"
    assert received.LossyImageCompressionMethod == "ISO_10918_1"
    assert received.pixel_array.astype(np.uint16).tobytes() == decoded


# pydicom warns (it does not fail) when pynetdicom writes the over-long UID into
# the Failed SOP Instance UID List; outside tests that warning is only printed.
@pytest.mark.filterwarnings("ignore:The value length \\(65\\) exceeds:UserWarning")
def test_qr_scp_move_long_uid_not_decodable_listed_in_failed_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Field case C18's 65-character UID, on an instance that cannot be sent.
    long_uid = "2.999.77.20250321143000.123456789012345678901234567890123456789.1"
    monkeypatch.setattr(transfer_syntaxes, "can_decode", lambda syntax: False)
    with config.disable_value_validation():
        instance = compressed(ct_instance(long_uid, seed=18), J2K)
    other = ct_instance(OTHER_SOP_UID, seed=16, instance_number=2)
    with (
        filled_cache(tmp_path, [instance, other]) as filled,
        console(UNCOMPRESSED) as viewer,
    ):
        filled.cache.destinations[VIEWER_AE] = (LOCALHOST, viewer.port)
        responses = c_move(filled.cache, VIEWER_AE)
    final, identifier = responses[-1]

    assert int(final.Status) == 0xB000
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 1
    assert identifier.FailedSOPInstanceUIDList == long_uid
    assert [r.sop_instance_uid for r in viewer.received] == [OTHER_SOP_UID]
    assert viewer.endings == ["released"]
