"""Settings and the sites file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from server.config import load_settings
from server.errors import ConfigurationError

SITE = {
    "name": "a",
    "ae_title": "SITE_A",
    "host": "127.0.0.1",
    "port": 104,
    "patient_id_domain": "urn:oid:2.999.1.1",
}


def sites_file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "sites.yaml"
    path.write_text(text, encoding="utf-8")
    return {"SPIDERS_SITES_FILE": str(path), "SPIDERS_DATA_DIR": str(tmp_path)}


def test_load_settings_no_configuration_gives_embedded_default(tmp_path: Path) -> None:
    settings = load_settings({"SPIDERS_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'spiders.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert (settings.ae_title, settings.dicom_port, settings.http_port) == (
        "SPIDERS",
        11112,
        8080,
    )
    assert settings.auto_select_modalities == ("CT", "MR", "PT")
    assert settings.auto_select_months == 24
    assert settings.prefetch_lead_hours == 24.0
    assert settings.directory.sites == ()


def test_load_settings_default_data_dir_is_var_in_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).data_dir == tmp_path / "var"


def test_load_settings_scaled_urls_taken_as_given(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "SPIDERS_DATABASE_URL": "postgresql://spiders@127.0.0.1/spiders",
            "SPIDERS_BROKER_URL": "redis://127.0.0.1:6379/0",
            "SPIDERS_AUTO_SELECT_MODALITIES": "ct, mr",
            "SPIDERS_PREFETCH_LEAD": "36",
        }
    )
    assert settings.database_url.startswith("postgresql://")
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.auto_select_modalities == ("CT", "MR")
    assert settings.prefetch_lead_hours == 36.0


@pytest.mark.parametrize("value", ["24h", "90m", "1.5d"])
def test_load_settings_prefetch_lead_with_unit(value: str) -> None:
    hours = {"24h": 24.0, "90m": 1.5, "1.5d": 36.0}[value]
    assert load_settings({"SPIDERS_PREFETCH_LEAD": value}).prefetch_lead_hours == hours


def test_load_directory_reads_sites_and_consoles(tmp_path: Path) -> None:
    env = sites_file(
        tmp_path,
        """
sites:
  - {name: a, ae_title: SITE_A, host: 127.0.0.1, port: 104,
     patient_id_domain: "urn:oid:2.999.1.1", retrieve: C-MOVE}
consoles:
  - {name: salle, ae_title: CONSOLE, host: 127.0.0.1, port: 11113}
""",
    )
    directory = load_settings(env).directory
    assert directory.site("a").patient_id_domain == "2.999.1.1"
    assert directory.site("a").retrieve == "c-move"
    assert directory.console_by_ae("CONSOLE") is not None
    assert directory.console_by_ae("OTHER") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sites: [{name: a}]",
            "sites[0] lacks ae_title, host, port, patient_id_domain",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: x, patient_id_domain: 1.2}]",
            "sites[0].port must be an integer",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: abc}]",
            "sites[0].patient_id_domain must be an OID",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " retrieve: ftp}]",
            "retrieve 'ftp' is not supported",
        ),
        (
            "sites: [{name: a, ae_title: WAY_TOO_LONG_AE_TITLE, host: h, port: 1,"
            " patient_id_domain: 1.2}]",
            "is not an AE title",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2},"
            " {name: a, ae_title: B, host: h, port: 1, patient_id_domain: 1.3}]",
            "duplicate site name 'a'",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " retrieve: wado-rs}]",
            "sites[0]: wado-rs needs dicomweb.url",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " query_model: series}]",
            "query_model 'series' is not supported",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " max_associations: 0}]",
            "max_associations must be 1 or more",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " maintenance: ['Sunday 1h']}]",
            "is not a window",
        ),
        (
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " timezone: Mars/Olympus}]",
            "is not a known time zone",
        ),
        ("- just a list", "must be a mapping"),
        ("sites: [unclosed", "cannot read sites file"),
    ],
)
def test_load_directory_invalid_file_names_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(sites_file(tmp_path, text))
    assert message in str(caught.value)


def test_load_settings_bad_port_refused() -> None:
    with pytest.raises(ConfigurationError, match="SPIDERS_DICOM_PORT"):
        load_settings({"SPIDERS_DICOM_PORT": "eleven"})


def test_load_settings_retrieve_parallel_default_two_and_at_least_one() -> None:
    assert load_settings({}).retrieve_parallel == 2
    assert load_settings({"SPIDERS_RETRIEVE_PARALLEL": "4"}).retrieve_parallel == 4
    with pytest.raises(ConfigurationError, match="SPIDERS_RETRIEVE_PARALLEL"):
        load_settings({"SPIDERS_RETRIEVE_PARALLEL": "0"})


def test_directory_unknown_site_refused() -> None:
    with pytest.raises(ConfigurationError, match="no site named 'x'"):
        load_settings({}).directory.site("x")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "mllp.chu.example"])
def test_mllp_off_loopback_without_client_certificates_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="SPIDERS_MLLP_TLS_CLIENT_CA"):
        load_settings({"SPIDERS_MLLP_HOST": host})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_mllp_on_loopback_needs_no_certificate(host: str) -> None:
    assert load_settings({"SPIDERS_MLLP_HOST": host}).mllp_host == host


def test_mllp_off_loopback_allowed_when_operator_says_so() -> None:
    settings = load_settings(
        {"SPIDERS_MLLP_HOST": "0.0.0.0", "SPIDERS_MLLP_ALLOW_UNAUTHENTICATED": "true"}
    )
    assert settings.mllp_host == "0.0.0.0"


def test_load_directory_reads_transport_and_limits(tmp_path: Path) -> None:
    settings = load_settings(
        sites_file(
            tmp_path,
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2,"
            " retrieve: WADO-RS, query: qido-rs, query_model: patient,"
            " dicomweb: {url: 'http://127.0.0.1:8042/dicom-web/',"
            " auth_header: Basic eDp5}, max_associations: 3, bandwidth_mbps: 50,"
            " maintenance: ['sat-sun 01:00-05:00', '23:30-00:30']}]",
        )
    )
    site = settings.directory.site("a")
    assert (site.retrieve, site.query, site.query_model) == (
        "wado-rs",
        "qido-rs",
        "patient",
    )
    assert site.dicomweb_url == "http://127.0.0.1:8042/dicom-web"
    assert site.dicomweb_auth_header == "Basic eDp5"
    assert (site.max_associations, site.bandwidth_mbps) == (3, 50.0)
    paris = ZoneInfo("Europe/Paris")
    # Saturday 2026-12-05 02:00 in Paris: inside the weekend window.
    assert site.in_maintenance(datetime(2026, 12, 5, 2, 0, tzinfo=paris))
    # Friday 02:00: outside it.
    assert not site.in_maintenance(datetime(2026, 12, 4, 2, 0, tzinfo=paris))
    # A window across midnight holds on both sides of it, every day.
    assert site.in_maintenance(datetime(2026, 12, 2, 23, 45, tzinfo=paris))
    assert site.in_maintenance(datetime(2026, 12, 3, 0, 15, tzinfo=paris))
    assert not site.in_maintenance(datetime(2026, 12, 3, 0, 30, tzinfo=paris))
    # Windows are the site's local time: 01:30 UTC is 02:30 in Paris.
    assert site.in_maintenance(datetime(2026, 12, 5, 1, 30, tzinfo=UTC))


def test_load_directory_site_defaults_are_dimse_study_root(tmp_path: Path) -> None:
    settings = load_settings(
        sites_file(
            tmp_path,
            "sites: [{name: a, ae_title: A, host: h, port: 1, patient_id_domain: 1.2}]",
        )
    )
    site = settings.directory.site("a")
    assert (site.retrieve, site.query, site.query_model) == (
        "c-move",
        "c-find",
        "study",
    )
    assert (site.max_associations, site.maintenance, site.bandwidth_mbps) == (
        2,
        (),
        None,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SPIDERS_DICOM_PORT", "70000", "must be a TCP port (0-65535), not 70000"),
        ("SPIDERS_HTTP_PORT", "99999", "must be a TCP port (0-65535), not 99999"),
        ("SPIDERS_MLLP_PORT", "-1", "must be a TCP port (0-65535), not -1"),
        ("SPIDERS_MLLP_IDLE_SECONDS", "nan", "must be a finite number, not 'nan'"),
        ("SPIDERS_MLLP_IDLE_SECONDS", "1e999", "must be a finite number"),
        ("SPIDERS_PREFETCH_LEAD", "-2h", "must be at least 0, not -2.0"),
        ("SPIDERS_AUTO_SELECT_MONTHS", "-3", "must be at least 0, not -3"),
        ("SPIDERS_WORKER_CONCURRENCY", "0", "must be at least 1, not 0"),
        ("SPIDERS_PREFETCH_LEAD", "1e20h", "must be at most 8784, not 1e+20"),
        ("SPIDERS_PREFETCH_DEADLINE_MARGIN", "-2h", "must be at least 0, not -2.0"),
        ("SPIDERS_AUTO_SELECT_MONTHS", "99999999", "must be at most 1200"),
    ],
)
def test_load_settings_out_of_range_values_named(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings({"SPIDERS_DATA_DIR": str(tmp_path), name: value})
    assert f"{name} {message}" in str(refused.value)
