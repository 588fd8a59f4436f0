"""``spiders sites check``: can SPIDERS reach every configured site?

Every site is checked at once, each within its own time-out. A site reached
over DICOM (C-FIND, C-MOVE or C-GET) is sent a C-ECHO (PS3.4 Annex A) on an
association that also proposes CT Image Storage once per common transfer
syntax, each in its own presentation context, so the answer tells which of
them the site accepts (PS3.8 9.3.2.2); with TLS when the site has a CA
configured. A site reached over DICOMweb (QIDO-RS or WADO-RS) is also asked
for one study (:func:`ihe.dicomweb.rad129_qido_rs_query.ping`). A site is
reachable when every protocol it is used with answered.

Limitations
-----------
The transfer syntaxes are those the site would accept for CT images it
receives; what it sends us on a C-MOVE is negotiated on its own association
and may differ. The DICOMweb check does not prove that WADO-RS retrieves are
allowed, only that the search answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ihe.dicom.ae import make_ae
from ihe.dicom.sop_classes import Verification
from ihe.dicomweb import rad129_qido_rs_query as rad129
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
        Every protocol the site is used with answered.
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
    """

    site: str
    reachable: bool
    latency_ms: int | None
    tls: bool
    transfer_syntaxes: list[str]
    dicomweb: DicomwebCheck | None
    error: str | None

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
    if site.query in DICOM_METHODS or site.retrieve in DICOM_METHODS:
        try:
            latency, accepted = echo(settings.ae_title, site)
        except PeerError as exc:
            errors.append(str(exc))
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
