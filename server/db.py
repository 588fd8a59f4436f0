"""Database engine and sessions, for SQLite (embedded) and PostgreSQL (scaled).

SQLite runs in WAL mode with a busy timeout so that the HTTP app, the DICOM
listener and the worker processes can write to the same file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from server.models import Base

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Database:
    """An engine, its session factory and the schema.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, ``sqlite:///...`` or ``postgresql://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        # Parameters never appear in exception messages: they hold patient data
        # and errors are logged.
        kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create every missing table."""
        Base.metadata.create_all(self.engine)
        logger.info("database schema ready", extra={"dialect": self.engine.name})

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a message acknowledged or an instance confirmed survives a power cut.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
