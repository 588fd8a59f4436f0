"""Audit repository settings: ``SPIDERS_AUDIT_*``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihe.atna.iti20_record_audit_event import Repository, Scheme
from server import audit
from server.config import load_settings
from server.db import Database
from server.errors import ConfigurationError
from tests.syslog_peer import make_pki

TLS_FILES = {
    "SPIDERS_AUDIT_TLS_CA": "ca.pem",
    "SPIDERS_AUDIT_TLS_CERT": "me.pem",
    "SPIDERS_AUDIT_TLS_KEY": "me.key",
}


def test_audit_settings_default_no_repository() -> None:
    settings = load_settings({})

    assert settings.audit_repositories == ()
    assert settings.audit_tls_ca is None


def test_audit_settings_list_of_tls_and_udp(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "SPIDERS_AUDIT_REPOSITORIES": "tls://arr.example:6514, udp://10.0.0.9:514,",
            **{k: str(tmp_path / v) for k, v in TLS_FILES.items()},
        }
    )

    assert settings.audit_repositories == (
        Repository(Scheme.TLS, "arr.example", 6514),
        Repository(Scheme.UDP, "10.0.0.9", 514),
    )
    assert settings.audit_tls_ca == tmp_path / "ca.pem"


def test_audit_settings_udp_needs_no_tls_files() -> None:
    settings = load_settings({"SPIDERS_AUDIT_REPOSITORIES": "udp://127.0.0.1:5514"})

    assert settings.audit_repositories[0].scheme is Scheme.UDP


def test_audit_settings_tls_without_files_refused() -> None:
    with pytest.raises(ConfigurationError, match="SPIDERS_AUDIT_TLS_CERT"):
        load_settings(
            {
                "SPIDERS_AUDIT_REPOSITORIES": "tls://arr.example",
                "SPIDERS_AUDIT_TLS_CA": "/etc/ssl/ca.pem",
            }
        )


@pytest.mark.parametrize("value", ["syslog://arr:514", "tls://arr:99999", "arr"])
def test_audit_settings_bad_repository_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SPIDERS_AUDIT_REPOSITORIES"):
        load_settings({"SPIDERS_AUDIT_REPOSITORIES": value})


def test_audit_sender_unreadable_tls_files_refused_at_start(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "SPIDERS_AUDIT_REPOSITORIES": "tls://127.0.0.1:6514",
            **{k: str(tmp_path / v) for k, v in TLS_FILES.items()},
        }
    )
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    with pytest.raises(ConfigurationError, match="audit TLS files"):
        audit.sender(settings, db)


def test_audit_sender_one_destination_per_repository(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = load_settings(
        {
            "SPIDERS_AUDIT_REPOSITORIES": "tls://127.0.0.1:6514,udp://127.0.0.1:514",
            "SPIDERS_AUDIT_TLS_CA": str(pki.ca),
            "SPIDERS_AUDIT_TLS_CERT": str(pki.client.cert),
            "SPIDERS_AUDIT_TLS_KEY": str(pki.client.key),
        }
    )
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    sender = audit.sender(settings, db)

    assert [d.repository.url for d in sender.destinations] == [
        "tls://127.0.0.1:6514",
        "udp://127.0.0.1:514",
    ]
    assert [d.transport.max_message_size for d in sender.destinations] == [None, 65507]
