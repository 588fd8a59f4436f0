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
        retrieve: c-move
    consoles:
      - name: salle-rcp
        ae_title: RCP_CONSOLE
        host: 127.0.0.1
        port: 11113

Limitations
-----------
Only the ``c-move`` retrieve method is accepted for now; association limits and
maintenance windows per site are not configurable yet. The audit TLS files are
checked when the sender starts, not here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ihe.atna.iti20_record_audit_event import Repository, Scheme
from ihe.hl7v2.codes import CHARSETS as HL7_CHARSETS
from server.errors import ConfigurationError

ENV_PREFIX = "SPIDERS_"
# HL7 v2 intake: the largest MLLP frame (bytes), and the character set of
# messages with an empty MSH-18. UTF-8 reads plain ASCII alike, and refuses
# Latin-1 bytes instead of turning accented names into nonsense.
DEFAULT_MLLP_MAX_FRAME = 10 * 1024 * 1024
MIN_MLLP_MAX_FRAME = 4096
DEFAULT_HL7_CHARSET = "UNICODE UTF-8"
RETRIEVE_METHODS = frozenset({"c-move"})
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class Site:
    """A producing PACS that SPIDERS queries and retrieves from."""

    name: str
    ae_title: str
    host: str
    port: int
    patient_id_domain: str
    retrieve: str = "c-move"
    timeout: float = 30.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        """True when associations with this site use TLS."""
        return self.tls_ca is not None


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
    worker_concurrency: int = 4
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
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    hl7_default_charset: str = DEFAULT_HL7_CHARSET

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
        dicom_port=_int(get("DICOM_PORT", "11112"), "SPIDERS_DICOM_PORT"),
        http_host=get("HTTP_HOST", "127.0.0.1"),
        http_port=_int(get("HTTP_PORT", "8080"), "SPIDERS_HTTP_PORT"),
        auto_select_modalities=modalities,
        auto_select_months=_int(get("AUTO_SELECT_MONTHS", "24"), "AUTO_SELECT_MONTHS"),
        prefetch_lead_hours=_hours(
            get("PREFETCH_LEAD", "24h"), "SPIDERS_PREFETCH_LEAD"
        ),
        worker_concurrency=_int(get("WORKER_CONCURRENCY", "4"), "WORKER_CONCURRENCY"),
        queue=get("QUEUE", "spiders"),
        **_security(env),
        log_format=get("LOG_FORMAT", "text"),
        log_level=get("LOG_LEVEL", "INFO").upper(),
        directory=load_directory(sites_file) if sites_file else Directory(),
        **_audit_settings(env),
        **_mllp_settings(env),
    )


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
        "mllp_port": _int(opt("MLLP_PORT") or 2575, "SPIDERS_MLLP_PORT"),
        "mllp_max_frame": max_frame,
        "mllp_tls_cert": cert,
        "mllp_tls_key": key,
        "mllp_tls_client_ca": client_ca,
        "hl7_default_charset": charset,
    }


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
        item, where, ("name", "ae_title", "host", "port", "patient_id_domain")
    )
    domain = str(data["patient_id_domain"]).removeprefix("urn:oid:")
    if not _OID.match(domain):
        raise ConfigurationError(f"{where}.patient_id_domain must be an OID")
    retrieve = str(data.get("retrieve", "c-move")).lower()
    if retrieve not in RETRIEVE_METHODS:
        raise ConfigurationError(
            f"{where}.retrieve {retrieve!r} is not supported "
            f"(choose from {', '.join(sorted(RETRIEVE_METHODS))})"
        )
    _check_ae_title(str(data["ae_title"]), f"{where}.ae_title")
    return Site(
        name=str(data["name"]),
        ae_title=str(data["ae_title"]),
        host=str(data["host"]),
        port=_int(data["port"], f"{where}.port"),
        patient_id_domain=domain,
        retrieve=retrieve,
        timeout=_float(data.get("timeout", 30), f"{where}.timeout"),
        **_site_tls(data.get("tls"), where),
    )


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
    data = _mapping(item, where, ("name", "ae_title", "host", "port"))
    _check_ae_title(str(data["ae_title"]), f"{where}.ae_title")
    return Console(
        name=str(data["name"]),
        ae_title=str(data["ae_title"]),
        host=str(data["host"]),
        port=_int(data["port"], f"{where}.port"),
    )


def _mapping(item: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where} must be a mapping")
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
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where} must be a number, not {value!r}") from exc
