"""The same flow on PostgreSQL with Redis or RabbitMQ as the broker.

The code is the same as on the embedded default; only ``SPIDERS_DATABASE_URL`` and
``SPIDERS_BROKER_URL`` change. PostgreSQL, Redis and RabbitMQ run on the
development and CI machines (127.0.0.1, default ports); a test skips locally when one
is missing and fails under ``CI=true``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from server.config import load_settings
from server.demo import run as demo
from server.demo import scenario
from server.demo.site import SimulatedSite
from server.demo.studies import generate_study
from tests.peers import free_port, require_service


def broker(kind: str) -> str:
    if kind == "redis":
        require_service("Redis", 6379)
        return "redis://127.0.0.1:6379/15"
    require_service("RabbitMQ", 5672)
    return "amqp://guest:guest@127.0.0.1:5672//"


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_flow_on_postgresql_and_broker_case_ready(
    tmp_path: Path, pg_url: str, kind: str
) -> None:
    broker_url = broker(kind)
    queue = f"spiders-test-{uuid.uuid4().hex[:8]}"
    who = scenario.person("desoeuvres")
    plan = [
        s for s in scenario.studies(datetime.now(UTC).date()) if s.person == who.key
    ]
    site_def = scenario.site("clinique-sud")
    site = SimulatedSite(site_def.name, site_def.ae_title, tmp_path / "site")
    made = [generate_study(s.spec, tmp_path / "gen", seed=s.seed) for s in plan]
    for study in made:
        site.load(study.files)
    dicom_port, http_port = free_port(), free_port()
    site.destinations["SPIDERS"] = ("127.0.0.1", dicom_port)
    site.start(free_port())
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text(
        yaml.safe_dump(
            {
                "sites": [
                    {
                        "name": site.name,
                        "ae_title": site.ae_title,
                        "host": "127.0.0.1",
                        "port": site.port,
                        "patient_id_domain": site_def.domain,
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    env = demo.server_env(
        load_settings({}), tmp_path / "data", sites_file, http_port, dicom_port
    )
    env["SPIDERS_DATABASE_URL"] = pg_url
    env["SPIDERS_BROKER_URL"] = broker_url
    env["SPIDERS_QUEUE"] = queue
    server = demo.Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        cases = demo.register_cases(server, datetime.now(UTC) + timedelta(hours=2))
        final = demo.follow(server, cases, None, timeout=120)
    finally:
        assert server.stop() == 0
        site.stop()
    assert final["desoeuvres"]["state"] == "ready", final
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT study_uid, count(*) FROM cached_instance GROUP BY study_uid"
                )
            )
            cached = {r[0]: int(r[1]) for r in rows}
            events = conn.execute(
                text("SELECT count(*) FROM audit_record WHERE event_id = '110112'")
            ).scalar()
    finally:
        engine.dispose()
    assert cached == {s.study_uid: len(s.files) for s in made}
    assert events == 1
    assert not (tmp_path / "data" / "spiders.sqlite").exists()
