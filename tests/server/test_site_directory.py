"""The sites file written into the database: every process reads one directory."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from server import site_directory
from server.cli import main
from server.config import load_settings
from server.runtime import Runtime

SITES = """
sites:
  - name: chu-nord
    ae_title: CHU_NORD
    host: 127.0.0.1
    port: 4242
    patient_id_domain: 2.999.1.1
    retrieve: wado-rs
    query: qido-rs
    dicomweb: {url: "http://127.0.0.1:8042/dicom-web", auth_header: "Basic c2VjcmV0"}
    max_associations: 3
    maintenance: ["sat-sun 01:00-05:00", "23:30-00:30"]
    bandwidth_mbps: 100
  - name: ch-valmont
    ae_title: CH_VALMONT
    host: 127.0.0.1
    port: 4343
    patient_id_domain: 2.999.1.2
"""


def env_for(tmp_path: Path, text: str) -> dict[str, str]:
    sites = tmp_path / "sites.yaml"
    sites.write_text(text, encoding="utf-8")
    return {
        "SPIDERS_DATA_DIR": str(tmp_path / "data"),
        "SPIDERS_SITES_FILE": str(sites),
    }


def test_opening_the_database_writes_the_sites(tmp_path: Path) -> None:
    rt = Runtime(load_settings(env_for(tmp_path, SITES)))
    rows = {r.name: r for r in site_directory.records(rt.db)}
    nord = rows["chu-nord"]
    assert (nord.retrieve, nord.query, nord.query_model) == (
        "wado-rs",
        "qido-rs",
        "study",
    )
    assert nord.dicomweb_url == "http://127.0.0.1:8042/dicom-web"
    assert (nord.max_associations, nord.bandwidth_mbps) == (3, 100.0)
    assert nord.maintenance == ["sat,sun 01:00-05:00", "23:30-00:30"]
    assert nord.timezone == "Europe/Paris"
    assert rows["ch-valmont"].retrieve == "c-move"
    rt.db.dispose()


def test_site_dropped_from_the_file_stays_inactive(tmp_path: Path) -> None:
    Runtime(load_settings(env_for(tmp_path, SITES))).db.dispose()
    only_valmont = SITES.split("  - name: ch-valmont")[1]
    rt = Runtime(
        load_settings(env_for(tmp_path, "sites:\n  - name: ch-valmont" + only_valmont))
    )
    assert [(r.name, r.active) for r in site_directory.records(rt.db)] == [
        ("ch-valmont", True),
        ("chu-nord", False),
    ]
    rt.db.dispose()


def test_sites_list_json_hides_the_auth_header(tmp_path: Path) -> None:
    Runtime(load_settings(env_for(tmp_path, SITES))).db.dispose()  # as serve does
    result = CliRunner().invoke(
        main, ["sites", "list", "--json"], env=env_for(tmp_path, SITES)
    )
    assert result.exit_code == 0, result.output
    data = {row["name"]: row for row in json.loads(result.output)}
    assert data["chu-nord"]["dicomweb_auth"] is True
    assert "c2VjcmV0" not in result.output
    assert data["ch-valmont"]["dicomweb_auth"] is False
    assert data["ch-valmont"]["max_associations"] == 2


def test_sites_list_with_another_file_changes_nothing(tmp_path: Path) -> None:
    Runtime(load_settings(env_for(tmp_path, SITES))).db.dispose()  # as serve does
    only_valmont = SITES.split("  - name: ch-valmont")[1]
    other = env_for(tmp_path, "sites:\n  - name: ch-valmont" + only_valmont)
    result = CliRunner().invoke(main, ["sites", "list", "--json"], env=other)
    assert result.exit_code == 0, result.output
    shown = {row["name"]: row["active"] for row in json.loads(result.output)}
    assert shown == {"chu-nord": True, "ch-valmont": True}
