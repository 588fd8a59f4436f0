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

A C-MOVE of a study of several series may be shared out
(:func:`retrieve_split`): the series, whole or by instances, are dealt into
at most ``SPIDERS_RETRIEVE_PARALLEL`` shares, balanced by instance count,
and each share is one SERIES- or IMAGE-level C-MOVE on its own association,
all at once. The site then opens as many associations to the cache, which
the listener processes of ``spiders serve`` take in turn, so one study uses
several cores. The shares' outcomes are reported as one, as the requests of
one retrieve are (:func:`~ihe.qr.rad16_retrieve_images.combine`): the worst,
counters summed. The caller holds a site slot for each share.

For C-GET and WADO-RS, the worker itself is the receiver, so it writes the
"DICOM Instances Transferred" audit message (110104) per study, as the
Storage SCP does for what a C-MOVE delivers: the site as source, SPIDERS as
destination, ``C`` when new instances were created, ``R`` when all were held
already, outcome 4 when the retrieve did not complete.

Limitations
-----------
Only C-MOVE is shared out: C-GET and WADO-RS are received by this process,
one request after the other. A whole study is shared out by the series the
site listed just before; a series it adds in between is not asked for, and
the count in the cache then finds the study incomplete. A share that ends
in an abort does not stop the others. The bandwidth cap applies to WADO-RS
only. An audit message that cannot be written is logged and does not change
the retrieve's outcome.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple
from urllib.parse import urlsplit

from ihe.dicom.archive import Archive
from ihe.dicomweb.rad107_wado_rs_retrieve import retrieve_study
from ihe.qr.rad16_retrieve_images import (
    MoveOutcome,
    RetrieveOutcome,
    combine,
    move_study,
)
from ihe.qr.rad16_retrieve_images_cget import get_study
from server import audit
from server.config import Settings, Site
from server.peers import site_call, site_endpoint

logger = logging.getLogger(__name__)

LOG_AUDIT_FAILED = "audit of a retrieve failed"
LOG_SPLIT = "retrieve shared out over several associations"
COMPLETE = frozenset({"success", "completed_with_warning"})

Progress = Callable[[int, int | None], None]


class Share(NamedTuple):
    """What one association of a shared-out retrieve asks for."""

    series_uids: list[str]
    instance_uids: dict[str, list[str]]


def parallel_for(settings: Settings, site: Site, series: int) -> int:
    """How many C-MOVEs a retrieve of `series` series from `site` may run at
    once, before counting the site's free slots."""
    if site.retrieve != "c-move":
        return 1
    return max(1, min(series, settings.retrieve_parallel, site.max_associations))


def shares(
    parts: int,
    series_uids: Sequence[str] = (),
    instance_uids: Mapping[str, Sequence[str]] | None = None,
    weights: Mapping[str, int] | None = None,
) -> list[Share]:
    """Deal the series wanted whole and the instance lists into `parts` shares.

    The largest go first, each to the share with the fewest instances so far;
    a series weighs its count in `weights` (1 when unknown), an instance list
    its length. No share is empty: there are at most as many as items.
    """
    items = [(1, uid, weights.get(uid, 1) if weights else 1) for uid in series_uids]
    items += [(2, uid, len(uids)) for uid, uids in (instance_uids or {}).items()]
    items.sort(key=lambda item: (-item[2], item[1]))
    dealt = [Share([], {}) for _ in range(max(1, min(parts, len(items))))]
    loads = [0] * len(dealt)
    for kind, uid, weight in items:
        n = loads.index(min(loads))
        loads[n] += weight
        if kind == 1:
            dealt[n].series_uids.append(uid)
        else:
            dealt[n].instance_uids[uid] = list((instance_uids or {})[uid])
    return dealt


def retrieve(
    settings: Settings,
    archive: Archive,
    site: Site,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
    on_progress: Progress | None = None,
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
    on_progress : callable, optional
        Called with (completed, remaining) on each pending C-MOVE or C-GET
        response.

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
            on_progress=on_progress,
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
            on_progress=on_progress,
        )
    return outcome


def retrieve_split(
    settings: Settings,
    archive: Archive,
    site: Site,
    study_uid: str,
    parts: int,
    series: Mapping[str, int],
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
    on_progress: Progress | None = None,
) -> MoveOutcome:
    """:func:`retrieve`, shared out over at most `parts` C-MOVEs run at once.

    Parameters
    ----------
    parts : int
        Associations the caller may open with the site: one per slot held.
    series : mapping
        The site's series of the study and their instance counts, to share
        the whole study out by and to balance the shares.
    series_uids, instance_uids : optional
        What is wanted, as for :func:`retrieve`; with neither, the whole
        study, asked for at STUDY level when it is not shared out.
    on_progress : callable, optional
        Called with the shares' (completed, remaining) summed.
    """
    whole = list(series_uids or ())
    if not whole and not instance_uids:
        whole = sorted(series)
    dealt = shares(parts, whole, instance_uids, series)
    if site.retrieve != "c-move" or len(dealt) < 2:
        return retrieve(
            settings, archive, site, study_uid, series_uids, instance_uids, on_progress
        )
    logger.info(
        LOG_SPLIT,
        extra={"site": site.name, "associations": len(dealt), "series": len(series)},
    )
    progress = _summed(len(dealt), on_progress)
    with ThreadPoolExecutor(len(dealt), thread_name_prefix="spiders-move") as pool:
        futures = [
            pool.submit(
                retrieve,
                settings,
                archive,
                site,
                study_uid,
                share.series_uids or None,
                share.instance_uids or None,
                progress[n] if progress else None,
            )
            for n, share in enumerate(dealt)
        ]
        return combine([future.result() for future in futures])


def _summed(parts: int, on_progress: Progress | None) -> list[Progress]:
    """One progress callback per share, telling `on_progress` their sums."""
    if on_progress is None:
        return []
    lock = threading.Lock()
    done: list[int] = [0] * parts
    remaining: list[int | None] = [None] * parts

    def share_progress(n: int) -> Progress:
        def report(completed: int, left: int | None) -> None:
            with lock:
                done[n], remaining[n] = completed, left
                known = [r for r in remaining if r is not None]
                total_left = sum(known) if len(known) == parts else None
                on_progress(sum(done), total_left)

        return report

    return [share_progress(n) for n in range(parts)]


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
