"""Settings from ``SPIDERS_*`` environment variables and the sites file.

Every setting has a default that works on one machine with nothing installed:
SQLite and the embedded broker live under ``SPIDERS_DATA_DIR`` (``./var``). The
scaled-out mode only changes ``SPIDERS_DATABASE_URL`` and ``SPIDERS_BROKER_URL``.

The sites file (``SPIDERS_SITES_FILE``, YAML) names the producing sites and the
viewing consoles::

    sites:
      - name: chu-nord
        ae_title: CHU_NORD
        host: 127.0.0.1
        port: 4242
        patient_id_domain: 2.999.1.1
        retrieve: c-move          # c-move | c-get | wado-rs
        query: c-find             # c-find | qido-rs
        query_model: study        # study | patient (root information model)
        dicomweb:                 # for qido-rs and wado-rs
          url: https://pacs.example/dicom-web
          auth_header: Basic c3BpZGVyczpzZWNyZXQ=
        max_associations: 2       # at once, across every worker
        timeout: 30               # seconds, per network operation
        maintenance: ["Sun 01:00-05:00", "02:30-03:00"]   # site's local time
        timezone: Europe/Paris
        bandwidth_mbps: 200       # cap on what one retrieve may take
    consoles:
      - name: salle-rcp
        ae_title: RCP_CONSOLE
        host: 127.0.0.1
        port: 11113

Limitations
-----------
The audit TLS files are checked when the sender starts, not here. A DICOMweb
``auth_header`` is read from the sites file as written; keep that file readable
by the service account only.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ihe.atna.iti20_record_audit_event import Repository, Scheme
from ihe.hl7v2.codes import CHARSETS as HL7_CHARSETS
from server.errors import ConfigurationError

ENV_PREFIX = "SPIDERS_"
# Bounds of the durations and look-back periods: beyond them, a typing error.
MAX_HOURS = 366 * 24
MAX_MONTHS = 1200
Number = TypeVar("Number", int, float)
# HL7 v2 intake: the largest MLLP frame (bytes), and the character set of
# messages with an empty MSH-18. UTF-8 reads plain ASCII alike, and refuses
# Latin-1 bytes instead of turning accented names into nonsense.
DEFAULT_MLLP_MAX_FRAME = 10 * 1024 * 1024
MIN_MLLP_MAX_FRAME = 4096
DEFAULT_HL7_CHARSET = "UNICODE UTF-8"
# A worker renews its leases every third of this; below it, renewals would
# crowd the database.
MIN_WORKER_LEASE_SECONDS = 3
# The first retry delay of a failed retrieve; each further retry doubles it.
MAX_RETRY_BASE_SECONDS = 86400
RETRIEVE_METHODS = frozenset({"c-move", "c-get", "wado-rs"})
QUERY_METHODS = frozenset({"c-find", "qido-rs"})
QUERY_MODELS = frozenset({"study", "patient"})
# Where discovery finds each site's patient identifier: the local index, or an
# external PIX Manager asked by ITI-9 (HL7 v2 over MLLP) or ITI-83 (PIXm).
PIX_SOURCES = frozenset({"local", "iti9", "iti83"})
DEFAULT_PIX_TIMEOUT = 10.0
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?:(?P<days>[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*)\s+)?"
    r"(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$"
)
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class MaintenanceWindow:
    """A weekly period when a site must not be queried or retrieved from.

    ``days`` holds ISO weekday numbers (Monday is 1); a window whose end is
    before its start runs past midnight into the next day.
    """

    days: frozenset[int]
    start: time
    end: time

    def __str__(self) -> str:
        """The window as a sites file writes it: ``sat,sun 01:00-05:00``."""
        span = f"{self.start:%H:%M}-{self.end:%H:%M}"
        if len(self.days) == len(DAYS):
            return span
        return ",".join(DAYS[d - 1] for d in sorted(self.days)) + " " + span

    def covers(self, moment: datetime) -> bool:
        """True when `moment` (in the site's time zone) falls in this window."""
        now, day = moment.time(), moment.isoweekday()
        if self.start <= self.end:
            return day in self.days and self.start <= now < self.end
        previous = 7 if day == 1 else day - 1
        return (day in self.days and now >= self.start) or (
            previous in self.days and now < self.end
        )


@dataclass(frozen=True)
class Site:
    """A producing PACS that SPIDERS queries and retrieves from."""

    name: str
    ae_title: str
    host: str
    port: int
    patient_id_domain: str
    retrieve: str = "c-move"
    query: str = "c-find"
    query_model: str = "study"
    dicomweb_url: str | None = None
    dicomweb_auth_header: str | None = None
    max_associations: int = 2
    timeout: float = 30.0
    maintenance: tuple[MaintenanceWindow, ...] = ()
    timezone: str = "Europe/Paris"
    bandwidth_mbps: float | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        """True when associations with this site use TLS."""
        return self.tls_ca is not None

    def in_maintenance(self, moment: datetime) -> bool:
        """True when `moment` (aware) falls in one of the site's windows."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        return any(window.covers(local) for window in self.maintenance)


@dataclass(frozen=True)
class Console:
    """A viewing console allowed to query the cache and receive its studies."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Directory:
    """Sites and consoles as read from the sites file."""

    sites: tuple[Site, ...] = ()
    consoles: tuple[Console, ...] = ()

    def site(self, name: str) -> Site:
        """Return the site called `name` or raise :class:`ConfigurationError`."""
        for site in self.sites:
            if site.name == name:
                return site
        if not self.sites:
            raise ConfigurationError(
                f"no site named {name!r}: no sites are configured (SPIDERS_SITES_FILE)"
            )
        known = ", ".join(s.name for s in self.sites)
        raise ConfigurationError(f"no site named {name!r} (known sites: {known})")

    def console_by_ae(self, ae_title: str) -> Console | None:
        """Return the console whose AE title is `ae_title`, if any."""
        for console in self.consoles:
            if console.ae_title == ae_title:
                return console
        return None


@dataclass(frozen=True)
class Settings:
    """Typed settings; see :func:`load_settings` for the variables."""

    data_dir: Path
    database_url: str
    broker_url: str
    sites_file: Path | None
    ae_title: str = "SPIDERS"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    auto_select_modalities: tuple[str, ...] = ("CT", "MR", "PT")
    auto_select_months: int = 24
    prefetch_lead_hours: float = 24.0
    prefetch_deadline_margin_hours: float = 1.0
    worker_lease_seconds: int = 60
    retry_base_seconds: float = 20.0
    notify_url: str | None = None
    worker_concurrency: int = 4
    store_processes: int = 1
    retrieve_parallel: int = 2
    queue: str = "spiders"
    jwt_keys: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str = "spiders"
    jwt_roles_claim: str = "roles"
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_client_ca: Path | None = None
    dicom_allow_unknown_callers: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    directory: Directory = field(default_factory=Directory)
    audit_repositories: tuple[Repository, ...] = ()
    audit_tls_ca: Path | None = None
    audit_tls_cert: Path | None = None
    audit_tls_key: Path | None = None
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_frame: int = DEFAULT_MLLP_MAX_FRAME
    mllp_max_connections: int = 64
    mllp_idle_seconds: float = 3600.0
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    hl7_default_charset: str = DEFAULT_HL7_CHARSET
    pix_source: str = "local"
    pix_mllp_host: str | None = None
    pix_mllp_port: int | None = None
    pix_url: str | None = None
    pix_auth_header: str | None = None
    pix_timeout: float = DEFAULT_PIX_TIMEOUT
    pix_tls_ca: Path | None = None
    pix_tls_cert: Path | None = None
    pix_tls_key: Path | None = None

    @property
    def cache_dir(self) -> Path:
        """Where received instances are written."""
        return self.data_dir / "cache"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default: the process environment).

    Raises
    ------
    ConfigurationError
        A value cannot be parsed or the sites file is invalid.
    """
    env = dict(os.environ if environ is None else environ)

    def get(name: str, default: str) -> str:
        return env.get(ENV_PREFIX + name, default).strip() or default

    data_dir = Path(get("DATA_DIR", "./var")).resolve()
    database_url = get("DATABASE_URL", f"sqlite:///{data_dir / 'spiders.sqlite'}")
    broker_url = get("BROKER_URL", f"sqla+sqlite:///{data_dir / 'broker.sqlite'}")
    sites_value = env.get(ENV_PREFIX + "SITES_FILE", "").strip()
    sites_file = Path(sites_value).resolve() if sites_value else None
    modalities = tuple(
        m.strip().upper()
        for m in get("AUTO_SELECT_MODALITIES", "CT,MR,PT").split(",")
        if m.strip()
    )
    ae_title = get("AE_TITLE", "SPIDERS")
    _check_ae_title(ae_title, "SPIDERS_AE_TITLE")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=broker_url,
        sites_file=sites_file,
        ae_title=ae_title,
        dicom_host=get("DICOM_HOST", "127.0.0.1"),
        dicom_port=_port(get("DICOM_PORT", "11112"), "SPIDERS_DICOM_PORT"),
        http_host=get("HTTP_HOST", "127.0.0.1"),
        http_port=_port(get("HTTP_PORT", "8080"), "SPIDERS_HTTP_PORT"),
        auto_select_modalities=modalities,
        auto_select_months=_at_least(
            0,
            _at_most(
                MAX_MONTHS,
                _int(get("AUTO_SELECT_MONTHS", "24"), "SPIDERS_AUTO_SELECT_MONTHS"),
                "SPIDERS_AUTO_SELECT_MONTHS",
            ),
            "SPIDERS_AUTO_SELECT_MONTHS",
        ),
        prefetch_lead_hours=_at_most(
            MAX_HOURS,
            _at_least(
                0,
                _hours(get("PREFETCH_LEAD", "24h"), "SPIDERS_PREFETCH_LEAD"),
                "SPIDERS_PREFETCH_LEAD",
            ),
            "SPIDERS_PREFETCH_LEAD",
        ),
        **_prefetch_settings(env),
        worker_concurrency=_at_least(
            1,
            _int(get("WORKER_CONCURRENCY", "4"), "SPIDERS_WORKER_CONCURRENCY"),
            "SPIDERS_WORKER_CONCURRENCY",
        ),
        store_processes=_store_processes(get("STORE_PROCESSES", "")),
        retrieve_parallel=_retrieve_parallel(get("RETRIEVE_PARALLEL", "2")),
        queue=get("QUEUE", "spiders"),
        **_security(env),
        log_format=get("LOG_FORMAT", "text"),
        log_level=get("LOG_LEVEL", "INFO").upper(),
        directory=load_directory(sites_file) if sites_file else Directory(),
        **_audit_settings(env),
        **_mllp_settings(env),
        **_pix_settings(env),
    )


def _prefetch_settings(env: dict[str, str]) -> dict[str, Any]:
    """The prefetch deadline, the workers' lease, the notification URL and the
    first retry delay of a failed retrieve."""
    margin = _hours(
        _opt(env, "PREFETCH_DEADLINE_MARGIN") or "1h",
        "SPIDERS_PREFETCH_DEADLINE_MARGIN",
    )
    _at_least(0, margin, "SPIDERS_PREFETCH_DEADLINE_MARGIN")
    _at_most(MAX_HOURS, margin, "SPIDERS_PREFETCH_DEADLINE_MARGIN")
    lease = _int(
        _opt(env, "WORKER_LEASE_SECONDS") or 60, "SPIDERS_WORKER_LEASE_SECONDS"
    )
    if lease < MIN_WORKER_LEASE_SECONDS:
        raise ConfigurationError(
            f"SPIDERS_WORKER_LEASE_SECONDS must be at least {MIN_WORKER_LEASE_SECONDS}"
        )
    url = _opt(env, "NOTIFY_URL")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigurationError("SPIDERS_NOTIFY_URL must be an http(s) URL")
    retry_base = _float(
        _opt(env, "RETRY_BASE_SECONDS") or 20, "SPIDERS_RETRY_BASE_SECONDS"
    )
    if not 0 < retry_base <= MAX_RETRY_BASE_SECONDS:
        raise ConfigurationError(
            "SPIDERS_RETRY_BASE_SECONDS must be above 0 and at most "
            f"{MAX_RETRY_BASE_SECONDS}"
        )
    return {
        "prefetch_deadline_margin_hours": margin,
        "worker_lease_seconds": lease,
        "notify_url": url,
        "retry_base_seconds": retry_base,
    }


def _opt(env: dict[str, str], name: str) -> str | None:
    """``SPIDERS_<name>``, stripped; ``None`` when unset or blank."""
    return env.get(ENV_PREFIX + name, "").strip() or None


def _path(env: dict[str, str], name: str) -> Path | None:
    """``SPIDERS_<name>`` as an absolute path, if set."""
    value = _opt(env, name)
    return Path(value).resolve() if value else None


def _flag(env: dict[str, str], name: str) -> bool:
    """``SPIDERS_<name>`` read as a yes/no switch, off by default."""
    return (_opt(env, name) or "false").lower() in TRUE_WORDS


def _tls_pair(env: dict[str, str], prefix: str) -> tuple[Path | None, Path | None]:
    """``SPIDERS_<prefix>_TLS_CERT`` and ``_KEY``, which go together."""
    cert, key = _path(env, f"{prefix}_TLS_CERT"), _path(env, f"{prefix}_TLS_KEY")
    if (cert is None) != (key is None):
        raise ConfigurationError(
            f"SPIDERS_{prefix}_TLS_CERT and SPIDERS_{prefix}_TLS_KEY go together"
        )
    return cert, key


def _security(env: dict[str, str]) -> dict[str, Any]:
    """Token, TLS and caller settings (``SPIDERS_JWT_*``, ``*_TLS_*``)."""

    def opt(name: str) -> str | None:
        return _opt(env, name)

    keys, issuer = opt("JWT_KEYS"), opt("JWT_ISSUER")
    if keys and not issuer:
        raise ConfigurationError(
            "SPIDERS_JWT_KEYS is set: SPIDERS_JWT_ISSUER is required"
        )
    algorithms = tuple(
        a.strip()
        for a in (opt("JWT_ALGORITHMS") or "RS256,ES256").split(",")
        if a.strip()
    )
    if any(a.lower() == "none" for a in algorithms):
        raise ConfigurationError("SPIDERS_JWT_ALGORITHMS may never include 'none'")
    http_cert, http_key = _tls_pair(env, "HTTP")
    dicom_cert, dicom_key = _tls_pair(env, "DICOM")
    return {
        "jwt_keys": keys,
        "jwt_issuer": issuer,
        "jwt_audience": opt("JWT_AUDIENCE") or "spiders",
        "jwt_roles_claim": opt("JWT_ROLES_CLAIM") or "roles",
        "jwt_algorithms": algorithms,
        "http_tls_cert": http_cert,
        "http_tls_key": http_key,
        "dicom_tls_cert": dicom_cert,
        "dicom_tls_key": dicom_key,
        "dicom_tls_client_ca": _path(env, "DICOM_TLS_CLIENT_CA"),
        "dicom_allow_unknown_callers": _flag(env, "DICOM_ALLOW_UNKNOWN_CALLERS"),
    }


def _audit_settings(env: dict[str, str]) -> dict[str, Any]:
    """Audit repositories (``SPIDERS_AUDIT_*``); TLS needs CA, cert and key."""
    text = env.get(ENV_PREFIX + "AUDIT_REPOSITORIES", "")
    try:
        repositories = tuple(
            Repository.parse(item) for item in text.split(",") if item.strip()
        )
    except ValueError as exc:
        raise ConfigurationError(f"SPIDERS_AUDIT_REPOSITORIES: {exc}") from exc
    paths = {name: _path(env, f"AUDIT_TLS_{name}") for name in ("CA", "CERT", "KEY")}
    if any(r.scheme is Scheme.TLS for r in repositories):
        missing = [f"SPIDERS_AUDIT_TLS_{n}" for n, p in paths.items() if p is None]
        if missing:
            raise ConfigurationError(
                "a tls:// audit repository needs mutual TLS: set " + ", ".join(missing)
            )
    return {
        "audit_repositories": repositories,
        "audit_tls_ca": paths["CA"],
        "audit_tls_cert": paths["CERT"],
        "audit_tls_key": paths["KEY"],
    }


TRUE_WORDS = frozenset({"1", "true", "yes"})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mllp_settings(env: dict[str, str]) -> dict[str, Any]:
    """The HL7 v2 listener (``SPIDERS_MLLP_*``, ``SPIDERS_HL7_DEFAULT_CHARSET``)."""

    def opt(name: str) -> str | None:
        return _opt(env, name)

    charset = (opt("HL7_DEFAULT_CHARSET") or DEFAULT_HL7_CHARSET).upper()
    if charset not in HL7_CHARSETS:
        raise ConfigurationError(
            f"SPIDERS_HL7_DEFAULT_CHARSET {charset!r} is not an MSH-18 value SPIDERS "
            f"reads ({', '.join(sorted(HL7_CHARSETS))})"
        )
    cert, key = _tls_pair(env, "MLLP")
    client_ca = _path(env, "MLLP_TLS_CLIENT_CA")
    if client_ca is not None and cert is None:
        raise ConfigurationError(
            "SPIDERS_MLLP_TLS_CLIENT_CA needs SPIDERS_MLLP_TLS_CERT and _KEY"
        )
    max_frame = _int(
        opt("MLLP_MAX_FRAME") or DEFAULT_MLLP_MAX_FRAME, "SPIDERS_MLLP_MAX_FRAME"
    )
    if max_frame < MIN_MLLP_MAX_FRAME:
        raise ConfigurationError(
            f"SPIDERS_MLLP_MAX_FRAME must be at least {MIN_MLLP_MAX_FRAME} bytes"
        )
    max_connections = _int(
        opt("MLLP_MAX_CONNECTIONS") or 64, "SPIDERS_MLLP_MAX_CONNECTIONS"
    )
    idle = _float(opt("MLLP_IDLE_SECONDS") or 3600, "SPIDERS_MLLP_IDLE_SECONDS")
    if max_connections < 1 or idle <= 0:
        raise ConfigurationError(
            "SPIDERS_MLLP_MAX_CONNECTIONS and SPIDERS_MLLP_IDLE_SECONDS must be "
            "positive"
        )
    host = opt("MLLP_HOST") or "127.0.0.1"
    insecure = _flag(env, "MLLP_ALLOW_UNAUTHENTICATED")
    if not _is_loopback(host) and client_ca is None and not insecure:
        # MLLP carries no identity: off loopback, only client certificates say
        # who may feed the patient index and register cases.
        raise ConfigurationError(
            f"SPIDERS_MLLP_HOST {host} is reachable from other machines: set "
            "SPIDERS_MLLP_TLS_CERT, SPIDERS_MLLP_TLS_KEY and "
            "SPIDERS_MLLP_TLS_CLIENT_CA (mutual TLS), or "
            "SPIDERS_MLLP_ALLOW_UNAUTHENTICATED=true on a closed network"
        )
    return {
        "mllp_host": host,
        "mllp_port": _port(opt("MLLP_PORT") or 2575, "SPIDERS_MLLP_PORT"),
        "mllp_max_frame": max_frame,
        "mllp_max_connections": max_connections,
        "mllp_idle_seconds": idle,
        "mllp_tls_cert": cert,
        "mllp_tls_key": key,
        "mllp_tls_client_ca": client_ca,
        "hl7_default_charset": charset,
    }


def _pix_settings(env: dict[str, str]) -> dict[str, Any]:
    """The external PIX Manager (``SPIDERS_PIX_*``), checked for its source."""
    source = (_opt(env, "PIX_SOURCE") or "local").lower()
    if source not in PIX_SOURCES:
        raise ConfigurationError(
            f"SPIDERS_PIX_SOURCE {source!r} is not supported "
            f"(choose from {', '.join(sorted(PIX_SOURCES))})"
        )
    timeout = _float(
        _opt(env, "PIX_TIMEOUT") or DEFAULT_PIX_TIMEOUT, "SPIDERS_PIX_TIMEOUT"
    )
    if timeout <= 0:
        raise ConfigurationError("SPIDERS_PIX_TIMEOUT must be above 0 seconds")
    cert, key = _tls_pair(env, "PIX")
    ca = _path(env, "PIX_TLS_CA")
    if cert is not None and ca is None:
        raise ConfigurationError("SPIDERS_PIX_TLS_CERT needs SPIDERS_PIX_TLS_CA")
    host, port = _pix_mllp(_opt(env, "PIX_MLLP"))
    url = _opt(env, "PIX_URL")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigurationError("SPIDERS_PIX_URL must be an http(s) URL")
    if source == "iti9" and host is None:
        raise ConfigurationError(
            "SPIDERS_PIX_SOURCE=iti9 needs SPIDERS_PIX_MLLP (host:port of the "
            "PIX Manager's HL7 v2 listener)"
        )
    if source == "iti83" and url is None:
        raise ConfigurationError(
            "SPIDERS_PIX_SOURCE=iti83 needs SPIDERS_PIX_URL (the PIX Manager's "
            "FHIR base URL)"
        )
    return {
        "pix_source": source,
        "pix_mllp_host": host,
        "pix_mllp_port": port,
        "pix_url": url.rstrip("/") if url else None,
        "pix_auth_header": _opt(env, "PIX_AUTH_HEADER"),
        "pix_timeout": timeout,
        "pix_tls_ca": ca,
        "pix_tls_cert": cert,
        "pix_tls_key": key,
    }


def _pix_mllp(value: str | None) -> tuple[str | None, int | None]:
    """``SPIDERS_PIX_MLLP`` as (host, port); ``[v6 address]:port`` allowed."""
    if value is None:
        return None, None
    host, colon, port_text = value.rpartition(":")
    host = host.strip().removeprefix("[").removesuffix("]")
    port = _int(port_text, "SPIDERS_PIX_MLLP port") if colon else 0
    if not host or not 0 < port < 65536:
        raise ConfigurationError(
            f"SPIDERS_PIX_MLLP {value!r} must be host:port (port 1-65535)"
        )
    return host, port


def load_directory(path: Path) -> Directory:
    """Read and check the sites file at `path`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read sites file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"sites file {path} must be a mapping")
    sites = tuple(_site(item, i) for i, item in enumerate(raw.get("sites") or []))
    consoles = tuple(
        _console(item, i) for i, item in enumerate(raw.get("consoles") or [])
    )
    _unique([s.name for s in sites], "site name")
    _unique([s.ae_title for s in sites], "site ae_title")
    _unique([c.ae_title for c in consoles], "console ae_title")
    return Directory(sites=sites, consoles=consoles)


def _site(item: Any, index: int) -> Site:
    where = f"sites[{index}]"
    data = _mapping(
        item,
        where,
        ("name", "ae_title", "host", "port", "patient_id_domain"),
        SITE_KEYS,
    )
    domain = str(data["patient_id_domain"]).removeprefix("urn:oid:")
    if not _OID.match(domain):
        raise ConfigurationError(f"{where}.patient_id_domain must be an OID")
    retrieve = _choice(data, "retrieve", "c-move", RETRIEVE_METHODS, where)
    query = _choice(data, "query", "c-find", QUERY_METHODS, where)
    _check_ae_title(str(data["ae_title"]), f"{where}.ae_title")
    dicomweb = _site_dicomweb(data.get("dicomweb"), where)
    for method in (retrieve, query):
        if method in {"wado-rs", "qido-rs"} and dicomweb["dicomweb_url"] is None:
            raise ConfigurationError(f"{where}: {method} needs dicomweb.url")
    max_associations = _int(
        data.get("max_associations", 2), f"{where}.max_associations"
    )
    if max_associations < 1:
        raise ConfigurationError(f"{where}.max_associations must be 1 or more")
    timeout = _float(data.get("timeout", 30), f"{where}.timeout")
    if timeout <= 0:
        raise ConfigurationError(f"{where}.timeout must be above 0")
    bandwidth = data.get("bandwidth_mbps")
    bandwidth_mbps = (
        None
        if bandwidth in (None, "")
        else _float(bandwidth, f"{where}.bandwidth_mbps")
    )
    if bandwidth_mbps is not None and bandwidth_mbps <= 0:
        raise ConfigurationError(f"{where}.bandwidth_mbps must be above 0")
    return Site(
        name=str(data["name"]),
        ae_title=str(data["ae_title"]),
        host=str(data["host"]),
        port=_int(data["port"], f"{where}.port"),
        patient_id_domain=domain,
        retrieve=retrieve,
        query=query,
        query_model=_choice(data, "query_model", "study", QUERY_MODELS, where),
        max_associations=max_associations,
        timeout=timeout,
        maintenance=_windows(data.get("maintenance"), where),
        timezone=_timezone(data.get("timezone", "Europe/Paris"), where),
        bandwidth_mbps=bandwidth_mbps,
        dicomweb_url=dicomweb["dicomweb_url"],
        dicomweb_auth_header=dicomweb["dicomweb_auth_header"],
        **_site_tls(data.get("tls"), where),
    )


def _choice(
    data: dict[str, Any], key: str, default: str, allowed: frozenset[str], where: str
) -> str:
    value = str(data.get(key) or default).strip().lower()
    if value not in allowed:
        raise ConfigurationError(
            f"{where}.{key} {value!r} is not supported "
            f"(choose from {', '.join(sorted(allowed))})"
        )
    return value


def _site_dicomweb(value: Any, where: str) -> dict[str, str | None]:
    """``dicomweb: {url: ..., auth_header: ...}``: the service root and the
    ``Authorization`` header value sent with every request, if any."""
    if value in (None, False):
        return {"dicomweb_url": None, "dicomweb_auth_header": None}
    if not isinstance(value, dict) or not value.get("url"):
        raise ConfigurationError(f"{where}.dicomweb needs 'url'")
    url = str(value["url"]).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{where}.dicomweb.url must be an http(s) URL")
    header = value.get("auth_header")
    return {
        "dicomweb_url": url,
        "dicomweb_auth_header": str(header) if header else None,
    }


def _windows(value: Any, where: str) -> tuple[MaintenanceWindow, ...]:
    """``["Sun 01:00-05:00", "mon-fri 12:00-13:00", "23:00-01:00"]``."""
    if value in (None, ""):
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigurationError(f"{where}.maintenance must be a list of windows")
    windows = []
    for item in items:
        match = _WINDOW.match(str(item).strip().lower())
        if match is None:
            raise ConfigurationError(
                f"{where}.maintenance {item!r} is not a window "
                "(like 'Sun 01:00-05:00' or '23:00-01:00')"
            )
        windows.append(
            MaintenanceWindow(
                days=_days(match["days"], where),
                start=_clock(match["start"], where),
                end=_clock(match["end"], where),
            )
        )
    return tuple(windows)


def _days(text: str | None, where: str) -> frozenset[int]:
    if not text:
        return frozenset(range(1, 8))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ConfigurationError(f"{where}.maintenance: unknown day in {part!r}")
        start, end = DAYS.index(first), DAYS.index(last or first)
        span = (
            range(start, end + 1)
            if start <= end
            else [*range(start, 7), *range(end + 1)]
        )
        days.update(i + 1 for i in span)
    return frozenset(days)


def _clock(text: str, where: str) -> time:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ConfigurationError(f"{where}.maintenance: {text!r} is not a time")
    return time(0, 0) if hours == 24 else time(hours, minutes)


def _timezone(value: Any, where: str) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"{where}.timezone {value!r} is not a known time zone"
        ) from exc
    return str(value)


def _site_tls(value: Any, where: str) -> dict[str, Path | None]:
    """``tls: {ca: ..., cert: ..., key: ...}``: the CA is required, the client
    certificate and key go together."""
    if value in (None, False):
        return {}
    if not isinstance(value, dict) or not value.get("ca"):
        raise ConfigurationError(f"{where}.tls needs at least 'ca' (a CA file)")
    if bool(value.get("cert")) != bool(value.get("key")):
        raise ConfigurationError(f"{where}.tls: 'cert' and 'key' go together")
    return {
        name: Path(str(value[key])).resolve() if value.get(key) else None
        for name, key in (("tls_ca", "ca"), ("tls_cert", "cert"), ("tls_key", "key"))
    }


def _console(item: Any, index: int) -> Console:
    where = f"consoles[{index}]"
    data = _mapping(item, where, ("name", "ae_title", "host", "port"), CONSOLE_KEYS)
    _check_ae_title(str(data["ae_title"]), f"{where}.ae_title")
    return Console(
        name=str(data["name"]),
        ae_title=str(data["ae_title"]),
        host=str(data["host"]),
        port=_int(data["port"], f"{where}.port"),
    )


SITE_KEYS = (
    "name",
    "ae_title",
    "host",
    "port",
    "patient_id_domain",
    "query",
    "query_model",
    "retrieve",
    "dicomweb",
    "max_associations",
    "timeout",
    "maintenance",
    "timezone",
    "bandwidth_mbps",
    "tls",
)
CONSOLE_KEYS = ("name", "ae_title", "host", "port")


def _mapping(
    item: Any, where: str, required: tuple[str, ...], known: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where} must be a mapping")
    unknown = sorted(str(key) for key in item if key not in known)
    if unknown:
        # A misspelt key would otherwise read as a missing one, or be ignored.
        raise ConfigurationError(
            f"{where} has unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(known)})"
        )
    missing = [key for key in required if item.get(key) in (None, "")]
    if missing:
        raise ConfigurationError(f"{where} lacks {', '.join(missing)}")
    return item


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigurationError(f"duplicate {what} {value!r} in the sites file")
        seen.add(value)


def _check_ae_title(value: str, where: str) -> None:
    if not _AE_TITLE.match(value) or value.strip() != value:
        raise ConfigurationError(
            f"{where} {value!r} is not an AE title (1-16 characters, no backslash, "
            "no leading or trailing space)"
        )


def _store_processes(value: str) -> int:
    """DICOM listener processes; one unless set (see ``server.serve``)."""
    if not value:
        return 1
    count = _int(value, "SPIDERS_STORE_PROCESSES")
    if count < 1:
        raise ConfigurationError("SPIDERS_STORE_PROCESSES must be at least 1")
    return count


def _retrieve_parallel(value: str) -> int:
    """C-MOVEs run at once for one study (see ``server.workflow.transports``)."""
    count = _int(value, "SPIDERS_RETRIEVE_PARALLEL")
    if count < 1:
        raise ConfigurationError("SPIDERS_RETRIEVE_PARALLEL must be at least 1")
    return count


def _int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where} must be an integer, not {value!r}") from exc


def _hours(value: str, where: str) -> float:
    """Hours from ``36``, ``24h``, ``90m`` or ``1.5d``."""
    units = {"h": 1.0, "m": 1 / 60, "d": 24.0}
    text = value.strip().lower()
    factor = units.get(text[-1:])
    number = text[:-1] if factor is not None else text
    return _float(number, where) * (factor or 1.0)


def _float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where} must be a number, not {value!r}") from exc
    if not math.isfinite(number):
        raise ConfigurationError(f"{where} must be a finite number, not {value!r}")
    return number


def _port(value: Any, where: str) -> int:
    port = _int(value, where)
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{where} must be a TCP port (0-65535), not {port}")
    return port


def _at_most(highest: float, value: Number, where: str) -> Number:
    if value > highest:
        raise ConfigurationError(f"{where} must be at most {highest:g}, not {value:g}")
    return value


def _at_least(lowest: float, value: Number, where: str) -> Number:
    if value < lowest:
        raise ConfigurationError(f"{where} must be at least {lowest:g}, not {value}")
    return value
