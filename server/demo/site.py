"""A simulated producing site: a real DICOM Q/R archive on loopback.

Each site is an :class:`~ihe.dicom.archive.Archive` with its own SQLite index,
served by the same Q/R SCP as the board's cache: C-FIND at every level with the
count keys, C-MOVE to the destinations it knows (0xA801 for others), C-GET.

Limitations
-----------
Runs in the calling process's threads; not meant as a PACS for real use.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import StoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom.ae import add_storage_scp_contexts, make_ae
from ihe.dicom.archive import Archive
from ihe.dicom.qr_scp import QueryRetrieveSCP
from ihe.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from server.db import Database

logger = logging.getLogger(__name__)


class SimulatedSite:
    """A site's PACS: an archive in `root`, served as `ae_title`.

    Parameters
    ----------
    name : str
        Site name, as in the sites file.
    ae_title : str
        The archive's AE title.
    root : pathlib.Path
        Directory for its files and index.
    """

    def __init__(self, name: str, ae_title: str, root: Path) -> None:
        self.name = name
        self.ae_title = ae_title
        root.mkdir(parents=True, exist_ok=True)
        self.db = Database(f"sqlite:///{root / 'index.sqlite'}")
        self.db.create_schema()
        self.archive = Archive(root / "files", self.db.sessions)
        self.destinations: dict[str, tuple[Any, ...]] = {}
        self.port: int | None = None
        self._server: ThreadedAssociationServer | None = None

    def load(self, files: Iterable[Path]) -> int:
        """Add DICOM files to the archive; returns how many."""
        count = 0
        for path in files:
            ds = dcmread(path)
            self.archive.store(
                path.read_bytes(), ds, str(ds.file_meta.TransferSyntaxUID), None
            )
            count += 1
        return count

    def start(
        self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        """Listen on `host`:`port`, with TLS when `tls` is given."""
        ae = make_ae(self.ae_title)
        add_storage_scp_contexts(ae)
        for model in (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
            Verification,
        ):
            ae.add_supported_context(model)
        for cx in StoragePresentationContexts:
            # pynetdicom's own context lists always name their abstract syntax.
            assert cx.abstract_syntax is not None
            ae.add_requested_context(cx.abstract_syntax)
        qr = QueryRetrieveSCP(self.archive, self.ae_title, self.destinations.get)
        self._server = ae.start_server(
            (host, port), block=False, ssl_context=tls, evt_handlers=qr.handlers
        )
        self.port = port
        logger.info(
            "simulated site started",
            extra={"site": self.name, "ae_title": self.ae_title, "port": port},
        )

    def stop(self) -> None:
        """Stop listening and close the index."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.db.dispose()
