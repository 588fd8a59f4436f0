"""Settings of the HL7 v2 listener (``SPIDERS_MLLP_*``, ``SPIDERS_HL7_*``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_settings
from server.errors import ConfigurationError


def test_load_settings_mllp_defaults(tmp_path: Path) -> None:
    settings = load_settings({"SPIDERS_DATA_DIR": str(tmp_path)})
    assert (settings.mllp_host, settings.mllp_port) == ("127.0.0.1", 2575)
    assert settings.mllp_max_frame == 10 * 1024 * 1024
    assert settings.hl7_default_charset == "UNICODE UTF-8"
    assert settings.mllp_tls_cert is None and settings.mllp_tls_client_ca is None
    assert (settings.mllp_max_connections, settings.mllp_idle_seconds) == (64, 3600.0)


def test_load_settings_mllp_values_read(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "SPIDERS_MLLP_HOST": "0.0.0.0",
            "SPIDERS_MLLP_PORT": "6661",
            "SPIDERS_MLLP_MAX_FRAME": "65536",
            "SPIDERS_HL7_DEFAULT_CHARSET": "8859/1",
            "SPIDERS_MLLP_TLS_CERT": str(tmp_path / "c.pem"),
            "SPIDERS_MLLP_TLS_KEY": str(tmp_path / "c.key"),
            "SPIDERS_MLLP_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
        }
    )
    assert (settings.mllp_host, settings.mllp_port) == ("0.0.0.0", 6661)
    assert settings.mllp_max_frame == 65536
    assert settings.hl7_default_charset == "8859/1"
    assert settings.mllp_tls_client_ca == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SPIDERS_HL7_DEFAULT_CHARSET": "UTF-16"}, "SPIDERS_HL7_DEFAULT_CHARSET"),
        ({"SPIDERS_MLLP_TLS_CERT": "/c.pem"}, "SPIDERS_MLLP_TLS_KEY"),
        ({"SPIDERS_MLLP_TLS_CLIENT_CA": "/ca.pem"}, "SPIDERS_MLLP_TLS_CLIENT_CA"),
        ({"SPIDERS_MLLP_MAX_FRAME": "100"}, "SPIDERS_MLLP_MAX_FRAME"),
        ({"SPIDERS_MLLP_PORT": "abc"}, "SPIDERS_MLLP_PORT"),
    ],
)
def test_load_settings_mllp_bad_value_names_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load_settings(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [("SPIDERS_MLLP_MAX_CONNECTIONS", "0"), ("SPIDERS_MLLP_IDLE_SECONDS", "-1")],
)
def test_load_settings_mllp_limits_must_be_positive(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match="must be positive"):
        load_settings({"SPIDERS_DATA_DIR": str(tmp_path), name: value})
    read = load_settings(
        {
            "SPIDERS_DATA_DIR": str(tmp_path),
            "SPIDERS_MLLP_MAX_CONNECTIONS": "8",
            "SPIDERS_MLLP_IDLE_SECONDS": "90",
        }
    )
    assert (read.mllp_max_connections, read.mllp_idle_seconds) == (8, 90.0)
