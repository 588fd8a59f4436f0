"""The process-wide runtime: settings, database and cache archive.

Every entry point (HTTP app, DICOM listener, worker, command line) builds one
:class:`Runtime` from the settings and shares it within its process.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from ihe.dicom.archive import Archive
from server import site_directory
from server.config import Settings, load_settings
from server.db import Database

if TYPE_CHECKING:
    from ihe.iua.tokens import TokenVerifier


class Runtime:
    """Lazily built shared objects for one process.

    Parameters
    ----------
    settings : Settings
        The configuration this process runs with.
    sync_sites : bool
        Write the sites file into the database when it is opened: what the
        serving processes do at start. The command-line tools that only read
        leave the table as the running processes wrote it.
    """

    def __init__(self, settings: Settings, *, sync_sites: bool = True) -> None:
        self.settings = settings
        self.sync_sites = sync_sites

    @cached_property
    def db(self) -> Database:
        """The database, schema created."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(self.settings.database_url)
        db.create_schema()
        if self.sync_sites and self.settings.sites_file is not None:
            site_directory.sync(db, self.settings.directory)
        return db

    @cached_property
    def token_verifier(self) -> TokenVerifier:
        """The bearer-token verifier: the identity provider's keys, or the
        development key of the data directory when none is configured."""
        # Imported here: the command-line tools that need no token start faster.
        from ihe.iua import dev_keys
        from ihe.iua.tokens import KeySet, TokenVerifier

        settings = self.settings
        if settings.jwt_keys:
            return TokenVerifier(
                KeySet(settings.jwt_keys),
                issuer=settings.jwt_issuer or "",
                audience=settings.jwt_audience,
                algorithms=settings.jwt_algorithms,
                roles_claim=settings.jwt_roles_claim,
            )
        return TokenVerifier(
            KeySet.from_jwks(dev_keys.public_jwks(settings.data_dir)),
            issuer=dev_keys.DEV_ISSUER,
            audience=dev_keys.DEV_AUDIENCE,
            algorithms=("ES256",),
            roles_claim="roles",
        )

    @cached_property
    def archive(self) -> Archive:
        """The board cache's files and index."""
        return Archive(self.settings.cache_dir, self.db.sessions)


_lock = threading.Lock()
_current: Runtime | None = None


def current() -> Runtime:
    """The runtime of this process, built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime(load_settings())
        return _current


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one :func:`current` returns (tests, the CLI)."""
    global _current
    with _lock:
        _current = runtime
