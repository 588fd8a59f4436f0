"""The cache's Storage SCP keeps instances in the transfer syntax they are sent in.

Sites send compressed instances (JPEG, JPEG-LS, JPEG 2000, RLE), deflated or, from
old devices, big endian. dcmtk's ``storescu`` sends each one proposing that syntax
(and the uncompressed ones, as a PACS would); the stored file must hold the syntax
and the very dataset bytes that were sent. The test instances are made from one
generated uncompressed CT with pydicom's encoders and dcmtk's converters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, build_context

from tests.ihe.dicom.dicom_support import (
    CacheServer,
    cache_server,
    dataset_part,
    open_archive,
)
from tests.ihe.dicom.test_transfer_syntaxes import ct_instance, ct_pixels
from tests.peers import LOCALHOST, run_dcmtk

SITE_AE = "PACS_NORD"
SOURCE_UID = "2.999.15.6.1"
# Each syntax a site may send, with the storescu option proposing it (beside the
# uncompressed syntaxes, each in its own presentation context).
SENT_AS = {
    JPEGBaseline8Bit: "-xy",
    JPEGLosslessSV1: "-xs",
    JPEGLSLossless: "-xt",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    RLELossless: "-xr",
    DeflatedExplicitVRLittleEndian: "-xd",
    ExplicitVRBigEndian: "-xb",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheServer]:
    """The cache's listener, built as ``spiders serve`` builds it."""
    archive, db = open_archive(tmp_path_factory.mktemp("storage-ts"))
    try:
        with cache_server(archive) as server:
            yield server
    finally:
        db.dispose()


def _source(directory: Path, sop_uid: str, *, bits: int = 16) -> tuple[Dataset, Path]:
    ds = ct_instance(sop_uid, seed=60)
    if bits == 8:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = (ct_pixels(60) // 16).astype("uint8").tobytes()
    path = directory / f"{sop_uid}-native.dcm"
    ds.save_as(path, enforce_file_format=True)

    return ds, path


def _with_pydicom(syntax: str, **options: object) -> Callable[[Path, str], Path]:
    def make(directory: Path, sop_uid: str) -> Path:
        ds, _ = _source(directory, sop_uid)
        encoded = copy.deepcopy(ds)
        encoded.compress(syntax, generate_instance_uid=False, **options)
        if options:
            encoded.LossyImageCompression = "01"
        path = directory / f"{sop_uid}.dcm"
        encoded.save_as(path, enforce_file_format=True)

        return path

    return make


def _with_dcmtk(
    tool: str, *options: str, bits: int = 16
) -> Callable[[Path, str], Path]:
    def make(directory: Path, sop_uid: str) -> Path:
        _, source = _source(directory, sop_uid, bits=bits)
        path = directory / f"{sop_uid}.dcm"
        proc = run_dcmtk(tool, *options, str(source), str(path))
        assert proc.returncode == 0, proc.stderr

        return path

    return make


MAKERS: dict[str, Callable[[Path, str], Path]] = {
    JPEGBaseline8Bit: _with_dcmtk("dcmcjpeg", "+eb", "+un", bits=8),
    JPEGLosslessSV1: _with_dcmtk("dcmcjpeg", "+e1"),
    JPEGLSLossless: _with_dcmtk("dcmcjpls", "+el"),
    JPEG2000Lossless: _with_pydicom(JPEG2000Lossless),
    JPEG2000: _with_pydicom(JPEG2000, j2k_cr=[5]),
    RLELossless: _with_pydicom(RLELossless),
    DeflatedExplicitVRLittleEndian: _with_dcmtk("dcmconv", "+td"),
    ExplicitVRBigEndian: _with_dcmtk("dcmconv", "+tb"),
}


@pytest.mark.peer
@pytest.mark.parametrize("syntax", list(SENT_AS), ids=[s.name for s in SENT_AS])
def test_storage_scp_storescu_syntax_stored_as_sent_bytes_equal(
    cache: CacheServer, tmp_path: Path, syntax: str
) -> None:
    sop_uid = f"2.999.15.6.{list(SENT_AS).index(syntax) + 10}"
    sent = MAKERS[syntax](tmp_path, sop_uid)
    assert str(dcmread(sent).file_meta.TransferSyntaxUID) == syntax

    proc = run_dcmtk(
        "storescu",
        SENT_AS[syntax],
        "-aet",
        SITE_AE,
        "-aec",
        cache.ae_title,
        LOCALHOST,
        str(cache.port),
        str(sent),
        timeout=60,
    )
    [row] = cache.archive.instances(sop_instance_uid=[sop_uid])
    [stored] = cache.archive.absolute([row])

    assert proc.returncode == 0, proc.stderr
    assert row.transfer_syntax == syntax
    assert str(dcmread(stored).file_meta.TransferSyntaxUID) == syntax
    # On the network an odd-length deflated stream carries one NUL pad byte
    # (PS3.5 A.5); it arrives, and is kept, with it.
    sent_part = dataset_part(sent.read_bytes())
    padding = b"\x00" * (len(sent_part) % 2)
    assert dataset_part(Path(stored).read_bytes()) == sent_part + padding


@pytest.mark.parametrize("syntax", list(SENT_AS), ids=[s.name for s in SENT_AS])
def test_storage_scp_every_storage_class_accepted_in_syntax(
    cache: CacheServer, syntax: str
) -> None:
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    accepted: dict[str, str] = {}
    # At most 128 presentation contexts per association request.
    for start in range(0, len(classes), 128):
        contexts = [
            build_context(uid, [syntax]) for uid in classes[start : start + 128]
        ]
        assoc = AE(ae_title=SITE_AE).associate(
            LOCALHOST, cache.port, ae_title=cache.ae_title, contexts=contexts
        )
        assert assoc.is_established
        try:
            for cx in assoc.accepted_contexts:
                accepted[str(cx.abstract_syntax)] = str(cx.transfer_syntax[0])
        finally:
            assoc.release()

    assert accepted == dict.fromkeys(classes, syntax)
