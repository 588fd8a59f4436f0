"""Helpers for the end-to-end flow tests: running ``spiders serve`` on a region."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from server.config import load_settings
from server.demo import run as demo
from tests.audit_schema import assert_valid_audit
from tests.peers import free_port


def start_server(
    root: Path,
    sites_file: Path,
    ae_title: str = "SPIDERS",
    dicom_port: int | None = None,
) -> demo.Server:
    """``spiders serve`` on free ports with its data under `root`."""
    settings = load_settings({"SPIDERS_AE_TITLE": ae_title})
    http_port = free_port()
    env = demo.server_env(
        settings, root / "spiders", sites_file, http_port, dicom_port or free_port()
    )
    env["SPIDERS_LOG_LEVEL"] = "INFO"
    server = demo.Server(env, http_port, root / "spiders.log")
    server.wait_ready()
    return server


def cached_study_uids(data_dir: Path) -> set[str]:
    """Study UIDs held in the cache index of a stopped or running server."""
    with _engine(data_dir).connect() as conn:
        rows = conn.execute(text("SELECT DISTINCT study_uid FROM cached_instance"))
        return {row[0] for row in rows}


def cached_counts(data_dir: Path) -> dict[str, int]:
    """Instances per study in the cache index."""
    with _engine(data_dir).connect() as conn:
        rows = conn.execute(
            text("SELECT study_uid, count(*) FROM cached_instance GROUP BY study_uid")
        )
        return {row[0]: int(row[1]) for row in rows}


def audit_rows(data_dir: Path) -> list[tuple[str, str, str]]:
    """(event id, action, xml) of every audit record, in order."""
    with _engine(data_dir).connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, event_action, xml FROM audit_record ORDER BY id")
        )
        return [(r[0], r[1], r[2]) for r in rows]


def assert_all_audit_valid(data_dir: Path) -> list[tuple[str, str, str]]:
    """Validate every audit record against the DICOM schema; return them."""
    rows = audit_rows(data_dir)
    for _, _, xml in rows:
        assert_valid_audit(xml.encode("utf-8"))
    return rows


def findscu_values(proc: subprocess.CompletedProcess[str], tag: str) -> list[str]:
    """Values of `tag` (``(0020,000d)``) in findscu's printed responses."""
    pattern = re.compile(re.escape(tag.lower()) + r" \w\w \[([^\]]*)\]")
    found = pattern.findall(proc.stderr.lower() + proc.stdout.lower())
    # UI values are padded to even length with NUL (PS3.5 6.2).
    return [value.strip(" \x00") for value in found]


def _engine(data_dir: Path) -> Any:
    return create_engine(f"sqlite:///{data_dir / 'spiders.sqlite'}")
