"""``spiders sites check``: can SPIDERS reach every configured site?

Every site is checked at once, each within its own time-out. A site reached
over DICOM (C-FIND, C-MOVE or C-GET) is sent a C-ECHO (PS3.4 Annex A) on an
association that also proposes CT Image Storage once per common transfer
syntax, each in its own presentation context, so the answer tells which of
them the site accepts (PS3.8 9.3.2.2); with TLS when the site has a CA
configured. A site reached over DICOMweb (QIDO-RS or WADO-RS) is also asked
for one study (:func:`ihe.dicomweb.rad129_qido_rs_query.ping`).

A site queried by C-FIND whose C-ECHO succeeded is then sent one STUDY-level
C-FIND (PS3.4 C.4.1; Study Root, or Patient Root for a site whose
``query_model`` is ``"patient"``) on a second association, with a PatientID
made up for the check that matches nobody (:data:`PROBE_PATIENT_ID_PREFIX`
and random hexadecimal digits). Many PACS answer C-ECHO from any AE title but
refuse queries from one they do not know: Orthanc, for one, aborts the
association. Whatever the site answers is read and dropped; only the final
status counts. A site is reachable when every protocol it is used with
answered and the C-FIND was not refused.

Limitations
-----------
The transfer syntaxes are those the site would accept for CT images it
receives; what it sends us on a C-MOVE is negotiated on its own association
and may differ. The DICOMweb check does not prove that WADO-RS retrieves are
allowed, only that the search answers. The C-FIND check does not prove that
the site finds real patients, nor that it accepts this cache as a C-MOVE
destination: a C-MOVE cannot be tried without asking for a real study. A
site that aborts the C-FIND is not told apart from one that does not answer
within its time-out. The C-FIND check names no patient and is not audited.
A site can take up to twice its time-out: the C-FIND comes after the C-ECHO.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from ihe.dicom.ae import make_ae
from ihe.dicom.sop_classes import Verification
from ihe.dicomweb import rad129_qido_rs_query as rad129
from ihe.qr import rad14_query_images as rad14
from ihe.qr.association import associate, released
from server.config import Settings, Site
from server.errors import PeerError
from server.peers import site_endpoint, site_tls

logger = logging.getLogger(__name__)

LOG_SITE_UNREACHABLE = "site unreachable"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# The transfer syntaxes proposed, with the short names the table shows.
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR LE",
    "1.2.840.10008.1.2.1": "Explicit VR LE",
    "1.2.840.10008.1.2.1.99": "Deflated",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
MAX_PARALLEL_SITES = 16
DICOM_METHODS = frozenset({"c-find", "c-move", "c-get"})
# The C-FIND check's PatientID starts so: no site issues such an ID, and the
# random digits after it make a match by chance impossible.
PROBE_PATIENT_ID_PREFIX = "SPIDERS-CHECK-NOBODY-"
QUERY_OK = "ok"
ROOT_NAMES = {"study": "Study Root", "patient": "Patient Root"}


@dataclass(frozen=True)
class DicomwebCheck:
    """What the site's DICOMweb service answered."""

    url: str
    status: int | None
    latency_ms: int | None


@dataclass(frozen=True)
class SiteCheck:
    """One site's reachability, as printed by ``spiders sites check``.

    Attributes
    ----------
    site : str
        The site's name in the sites file.
    reachable : bool
        Every protocol the site is used with answered, and the site did not
        refuse the C-FIND check.
    latency_ms : int or None
        Association, C-ECHO and release, in milliseconds; ``None`` when the
        site is not reached over DICOM or did not answer.
    tls : bool
        DICOM associations with the site use TLS.
    transfer_syntaxes : list of str
        Transfer Syntax UIDs the site accepted for CT Image Storage, in the
        order proposed.
    dicomweb : DicomwebCheck or None
        The DICOMweb check, for sites reached over DICOMweb.
    error : str or None
        Why the site is not reachable.
    query : str or None
        The C-FIND check: ``"ok"``, or why the site refused it
        (``"aborted or timed out"``, ``"status 0xA700"``, ``"association
        refused"``, ``"Study Root not accepted"``, ``"Patient Root not
        accepted"``); ``None`` when the site is not queried by C-FIND or its
        C-ECHO failed.
    """

    site: str
    reachable: bool
    latency_ms: int | None
    tls: bool
    transfer_syntaxes: list[str]
    dicomweb: DicomwebCheck | None
    error: str | None
    query: str | None = None

    def as_json(self) -> dict[str, object]:
        """The check as a JSON object (``--json``)."""
        return asdict(self)


def check_sites(settings: Settings) -> list[SiteCheck]:
    """Check every site of the sites file at once; results in file order."""
    sites = settings.directory.sites
    if not sites:
        return []
    with ThreadPoolExecutor(
        max_workers=min(len(sites), MAX_PARALLEL_SITES), thread_name_prefix="check"
    ) as pool:
        futures = [pool.submit(check_site, settings, site) for site in sites]
        return [future.result() for future in futures]


def check_site(settings: Settings, site: Site) -> SiteCheck:
    """Check one site over every protocol it is used with."""
    errors: list[str] = []
    latency: int | None = None
    accepted: list[str] = []
    query: str | None = None
    if site.query in DICOM_METHODS or site.retrieve in DICOM_METHODS:
        try:
            latency, accepted = echo(settings.ae_title, site)
        except PeerError as exc:
            errors.append(str(exc))
        else:
            if site.query == "c-find":
                query = find_probe(settings.ae_title, site)
                if query != QUERY_OK:
                    errors.append(_refused_text(query, settings.ae_title, site))
    web = None
    if site.dicomweb_url and (site.query == "qido-rs" or site.retrieve == "wado-rs"):
        web, web_error = _ping(site)
        if web_error:
            errors.append(web_error)
    if errors:
        logger.warning(LOG_SITE_UNREACHABLE, extra={"site": site.name})
    return SiteCheck(
        site=site.name,
        reachable=not errors,
        latency_ms=latency,
        tls=site.tls,
        transfer_syntaxes=accepted,
        dicomweb=web,
        error="; ".join(errors) or None,
        query=query,
    )


def echo(calling_ae: str, site: Site) -> tuple[int, list[str]]:
    """C-ECHO `site`; the round trip in ms and the accepted transfer syntaxes.

    Raises
    ------
    PeerError
        No association, no Verification context, or a failed C-ECHO.
    """
    ae = make_ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = site.timeout
    ae.add_requested_context(Verification)
    for uid in TRANSFER_SYNTAXES:
        ae.add_requested_context(CT_IMAGE_STORAGE, [uid])
    tls = site_tls(site)
    started = time.monotonic()
    assoc = ae.associate(
        site.host,
        site.port,
        ae_title=site.ae_title,
        tls_args=(tls, site.host) if tls is not None else None,
    )
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "refused, unreachable or timed out"
        raise PeerError(
            f"no association with {site.ae_title} at {site.host}:{site.port}: {why}"
        )
    try:
        accepted = _accepted(
            [
                cx.transfer_syntax[0]
                for cx in assoc.accepted_contexts
                if cx.abstract_syntax == CT_IMAGE_STORAGE and cx.transfer_syntax
            ]
        )
        if not any(
            cx.abstract_syntax == Verification for cx in assoc.accepted_contexts
        ):
            raise PeerError(f"{site.ae_title} does not accept Verification (C-ECHO)")
        status = assoc.send_c_echo()
        code = int(status.get("Status", -1)) if status else -1
        if code != 0x0000:
            raise PeerError(f"C-ECHO at {site.ae_title} failed ({_status(code)})")
    finally:
        if assoc.is_established:
            assoc.release()
    return round((time.monotonic() - started) * 1000), accepted


def find_probe(calling_ae: str, site: Site) -> str:
    """Send `site` a C-FIND that matches nobody; ``"ok"`` or why it failed.

    One STUDY-level C-FIND of the site's information model, keyed on a
    PatientID no site holds, within the site's time-out. Responses are read
    and dropped: a site that matches loosely is not at fault here.
    """
    sop_class = rad14.sop_class_for(site.query_model)
    assoc = associate(
        calling_ae=calling_ae,
        ae_title=site.ae_title,
        host=site.host,
        port=site.port,
        # Verification too, so that a site refusing only the C-FIND context
        # still accepts the association and says so.
        contexts=[(sop_class, None), (Verification, None)],
        timeout=site.timeout,
        tls=site_tls(site),
    )
    if not assoc.is_established:
        return "association refused"
    with released(assoc):
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            return f"{ROOT_NAMES.get(site.query_model, 'Study Root')} not accepted"
        identifier = rad14.build_identifier(
            PROBE_PATIENT_ID_PREFIX + secrets.token_hex(8),
            query_model=site.query_model,
        )
        code = _final_status(assoc, identifier, sop_class)
    if code == rad14.SUCCESS:
        return QUERY_OK
    return "aborted or timed out" if code < 0 else f"status 0x{code:04X}"


def _final_status(assoc: Association, identifier: Dataset, sop_class: str) -> int:
    """The C-FIND's final status; -1 when the site aborted or did not answer."""
    code = -1
    try:
        for status, _ in assoc.send_c_find(identifier, sop_class):
            code = int(status.get("Status", -1)) if status else -1
    except RuntimeError:
        # pynetdicom's answer to an association the site aborted before the request.
        return -1
    return code


def _refused_text(query: str, calling_ae: str, site: Site) -> str:
    """The error of a refused C-FIND check, with what the operator can do."""
    said = f"C-ECHO answers but C-FIND is refused ({query})"
    if query.endswith("not accepted"):
        return (
            f"{said}: the site may not offer this information model; check the "
            f"site's query_model ({site.query_model})"
        )
    return (
        f"{said}: the site may not allow this AE title to query; declare "
        f"{calling_ae} (AE title, host, port) on the site"
    )


def _accepted(uids: Sequence[str]) -> list[str]:
    return [uid for uid in TRANSFER_SYNTAXES if uid in set(uids)]


def _status(code: int) -> str:
    return "no answer" if code < 0 else f"0x{code:04X}"


def _ping(site: Site) -> tuple[DicomwebCheck, str | None]:
    endpoint = site_endpoint(site)
    url = endpoint.url
    try:
        answer = rad129.ping(endpoint)
    except PeerError as exc:
        return DicomwebCheck(url, None, None), str(exc)
    return DicomwebCheck(url, answer.status, round(answer.latency_ms)), None
