"""Shared fixtures: settings in a temporary data directory, the app, a client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server import runtime
from server.config import Settings, load_settings
from server.runtime import Runtime

DATA = Path(__file__).parent / "data"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def load_json(relative: str) -> dict[str, object]:
    """A JSON file under tests/data."""
    return json.loads((DATA / relative).read_text(encoding="utf-8"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of the embedded default in a fresh data directory, no sites."""
    return load_settings({"SPIDERS_DATA_DIR": str(tmp_path / "var")})


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1, dropped after the test."""
    from sqlalchemy import create_engine, text

    from tests.peers import require_service

    require_service("PostgreSQL", 5432)
    name = f"spiders_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    """A runtime installed as the process's, disposed after the test."""
    instance = Runtime(settings)
    runtime.install(instance)
    from server import tasks

    tasks.configure(settings)
    yield instance
    runtime.install(None)
    instance.db.dispose()


@pytest.fixture
def app(rt: Runtime) -> Flask:
    """The Flask application over `rt`."""
    from server.http.app import create_app

    application = create_app(rt)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Flask, rt: Runtime) -> FlaskClient:
    """A test client of `app` sending a token with every role but the
    security officer's."""
    test_client = app.test_client()
    roles = [r for r in ALL_ROLES if r != "security-officer"]
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(rt, *roles)}"
    return test_client


ALL_ROLES = ("clinician", "coordinator", "radiologist", "security-officer", "system")


def token_for(rt: Runtime, *roles: str, subject: str = "test-user") -> str:
    """A development token of `rt`'s data directory carrying `roles`."""
    from ihe.iua import dev_keys

    return dev_keys.mint(rt.settings.data_dir, roles, subject=subject)


def auth_headers(rt: Runtime, *roles: str) -> dict[str, str]:
    """``Authorization`` header with a development token carrying `roles`."""
    return {"Authorization": f"Bearer {token_for(rt, *roles)}"}


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A test client that sends no token."""
    return app.test_client()


@pytest.fixture(autouse=True)
def _every_audit_message_valid(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validate each audit message a test records against the DICOM schema.

    Tests that feed the outbox something invalid on purpose carry the
    ``audit_unchecked`` marker.
    """
    if request.node.get_closest_marker("audit_unchecked"):
        return
    from ihe.atna import outbox
    from tests.audit_schema import assert_valid_audit

    original = outbox.record

    def checked(session: object, xml: bytes, **kwargs: object) -> object:
        assert_valid_audit(xml)
        return original(session, xml, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outbox, "record", checked)
