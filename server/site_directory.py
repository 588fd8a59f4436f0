"""The sites file written into the database, so every process reads one directory.

Each serving process (``spiders serve``, every ``spiders worker``) calls
:func:`sync` with the sites it read when it starts; the command-line tools
that only read (``spiders status``, ``spiders sites list``) do not, so one run
with another sites file does not change what the others show:
rows are created or updated to match the file, and sites no longer in the file
are marked inactive rather than deleted. Two processes starting at once write
the same values; the last write wins and both are equal.

Limitations
-----------
The database copy is for reading (status views, other hosts); each process
still works from the sites file it was started with, so a worker started
with an older file keeps the older settings until it is restarted.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from server.config import Directory, Site
from server.db import Database
from server.models.site import SiteRecord

logger = logging.getLogger(__name__)

LOG_SYNCED = "sites written to the database"


def sync(db: Database, directory: Directory) -> int:
    """Write `directory`'s sites into the ``site`` table; returns how many."""
    for attempt in (1, 2):
        try:
            with db.session() as session:
                for site in directory.sites:
                    session.merge(record_of(site))
                session.execute(
                    update(SiteRecord)
                    .where(SiteRecord.name.not_in([s.name for s in directory.sites]))
                    .values(active=False)
                )
            break
        except IntegrityError:
            # Another process inserted the same site meanwhile: merge again.
            if attempt == 2:
                raise
    logger.info(LOG_SYNCED, extra={"sites": len(directory.sites)})
    return len(directory.sites)


def records(db: Database) -> list[SiteRecord]:
    """Every site the database holds, active first, by name."""
    with db.session() as session:
        rows = session.scalars(
            select(SiteRecord).order_by(SiteRecord.active.desc(), SiteRecord.name)
        ).all()
        session.expunge_all()
        return list(rows)


def record_of(site: Site) -> SiteRecord:
    """The row for `site`, as the sites file describes it."""
    return SiteRecord(
        name=site.name,
        active=True,
        ae_title=site.ae_title,
        host=site.host,
        port=site.port,
        patient_id_domain=site.patient_id_domain,
        query=site.query,
        query_model=site.query_model,
        retrieve=site.retrieve,
        dicomweb_url=site.dicomweb_url,
        dicomweb_auth_header=site.dicomweb_auth_header,
        max_associations=site.max_associations,
        timeout=site.timeout,
        maintenance=[str(w) for w in site.maintenance],
        timezone=site.timezone,
        bandwidth_mbps=site.bandwidth_mbps,
        tls_ca=str(site.tls_ca) if site.tls_ca else None,
        tls_cert=str(site.tls_cert) if site.tls_cert else None,
        tls_key=str(site.tls_key) if site.tls_key else None,
    )
