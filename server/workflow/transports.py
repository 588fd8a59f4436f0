"""The retrieve transports: one call that retrieves a study by the site's means.

The prefetch asks for a study, or for what is missing of it (whole series,
and the instances missing from a partly received series), and gets a
:class:`~ihe.qr.rad16_retrieve_images.RetrieveOutcome`, whichever way the
sites file says the site is retrieved from (``retrieve``):

``c-move``
    :func:`ihe.qr.rad16_retrieve_images.move_study`: the site opens its own
    association to the cache's Storage SCP in ``spiders serve``, which stores
    and audits what arrives.
``c-get``
    :func:`ihe.qr.rad16_retrieve_images_cget.get_study`: the instances come
    back on our association and this process stores them.
``wado-rs``
    :func:`ihe.dicomweb.rad107_wado_rs_retrieve.retrieve_study`: over HTTP
    from the site's DICOMweb service; this process stores them.

For C-GET and WADO-RS, the worker itself is the receiver, so it writes the
"DICOM Instances Transferred" audit message (110104) per study, as the
Storage SCP does for what a C-MOVE delivers: the site as source, SPIDERS as
destination, ``C`` when new instances were created, ``R`` when all were held
already, outcome 4 when the retrieve did not complete.

Limitations
-----------
The bandwidth cap applies to WADO-RS only. An audit message that cannot be
written is logged and does not change the retrieve's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from ihe.dicom.archive import Archive
from ihe.dicomweb.rad107_wado_rs_retrieve import retrieve_study
from ihe.qr.rad16_retrieve_images import MoveOutcome, RetrieveOutcome, move_study
from ihe.qr.rad16_retrieve_images_cget import get_study
from server import audit
from server.config import Settings, Site
from server.peers import site_call, site_endpoint

logger = logging.getLogger(__name__)

LOG_AUDIT_FAILED = "audit of a retrieve failed"
COMPLETE = frozenset({"success", "completed_with_warning"})


def retrieve(
    settings: Settings,
    archive: Archive,
    site: Site,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
) -> MoveOutcome:
    """Retrieve `study_uid`, or only the series and instances named, from `site`.

    Parameters
    ----------
    settings : Settings
        Our AE title (calling AE, and Move Destination for C-MOVE).
    archive : Archive
        The cache, where C-GET and WADO-RS store what they receive.
    site : Site
        The site, whose ``retrieve`` chooses the transport.
    series_uids : sequence of str, optional
        Series wanted whole.
    instance_uids : mapping, optional
        Series Instance UID to the SOP Instance UIDs wanted of it. With
        neither, the whole study.

    Returns
    -------
    RetrieveOutcome
        Never raises for peer behaviour; every failure is an outcome.
    """
    if site.retrieve == "c-get":
        outcome = get_study(
            **site_call(settings, site),
            study_uid=study_uid,
            archive=archive,
            series_uids=series_uids,
            instance_uids=instance_uids,
        )
        _audit_received(settings, archive, site, site.host, outcome)
    elif site.retrieve == "wado-rs":
        if not site.dicomweb_url:
            return RetrieveOutcome(
                "unable_to_process", error_comment="the site has no dicomweb url"
            )
        outcome = retrieve_study(
            site_endpoint(site),
            study_uid,
            archive,
            series_uids=series_uids,
            instance_uids=instance_uids,
            bandwidth_mbps=site.bandwidth_mbps,
            source=site.ae_title,
        )
        host = urlsplit(site.dicomweb_url).hostname or site.host
        _audit_received(settings, archive, site, host, outcome)
    else:
        outcome = move_study(
            **site_call(settings, site),
            study_uid=study_uid,
            destination=settings.ae_title,
            series_uids=series_uids,
            instance_uids=instance_uids,
        )
    return outcome


def _audit_received(
    settings: Settings,
    archive: Archive,
    site: Site,
    host: str,
    outcome: RetrieveOutcome,
) -> None:
    """One 110104 per study this process stored, in the cache's database."""
    if not outcome.studies:
        return
    try:
        with archive.sessions() as session, session.begin():
            for study in outcome.studies:
                audit.instances_transferred(
                    session,
                    settings,
                    source_ae=site.ae_title,
                    source_host=host,
                    destination=audit.us(settings, requestor=True),
                    study_uid=study.study_uid,
                    sop_classes=study.sop_classes,
                    patient_id=study.patient_id or "unknown",
                    patient_name_value=study.patient_name,
                    action="C" if study.new else "R",
                    outcome=0 if outcome.outcome in COMPLETE else 4,
                )
    except Exception:
        logger.exception(LOG_AUDIT_FAILED, extra={"site": site.name})
