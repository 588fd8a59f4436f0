"""Access-token verification (IHE IUA resource server side), with python-jose.

A token is accepted only when all of these hold:

- its algorithm is on the allow-list (RS256 and ES256 by default); ``none`` is
  never accepted, and an HMAC algorithm is accepted only with a symmetric key
  (``kty: oct``), so a public key can never be used as an HMAC secret;
- its signature verifies with one of the configured keys (a PEM public key, a
  JWKS file or a JWKS URL);
- ``iss`` equals the configured issuer and ``aud`` contains the configured
  audience (a token without ``aud`` is refused: python-jose accepts it unless
  told to require it);
- ``exp`` is present and not passed, and ``nbf`` (when present) is reached,
  with at most :data:`MAX_LEEWAY` seconds of clock skew.

Limitations
-----------
JWKS URLs are fetched at first use, again every :data:`JWKS_REFRESH_SECONDS`,
and when a token names an unknown key id at most every :data:`JWKS_MIN_REFETCH`
seconds; while the URL cannot be reached the last keys stay in use. Token
revocation and introspection (ITI-102) are not supported.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jose import jwk, jwt
from jose.exceptions import JOSEError

from ihe.iua.roles import Role

logger = logging.getLogger(__name__)

MAX_LEEWAY = 30
DEFAULT_ALGORITHMS = ("RS256", "ES256")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
JWKS_REFRESH_SECONDS = 300
JWKS_MIN_REFETCH = 30


class TokenError(Exception):
    """The token is missing, malformed, or fails a check; ``str()`` says which."""


@dataclass(frozen=True)
class Principal:
    """Who called: subject, roles, and the token's issuer."""

    subject: str
    roles: frozenset[str]
    issuer: str
    claims: dict[str, Any] = field(default_factory=dict, compare=False)

    def has_any(self, roles: Sequence[Role]) -> bool:
        """True when the principal holds one of `roles`."""
        return bool(self.roles & {str(r) for r in roles})


class KeySet:
    """Verification keys from a PEM file, a JWKS file or a JWKS URL.

    Parameters
    ----------
    source : str
        A path to a PEM public key or JWKS JSON file, or an ``https://`` URL of
        a JWKS.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] = []
        self._fetched = 0.0
        if not source.startswith(("https://", "http://")):
            self._keys = load_key_file(Path(source))

    @classmethod
    def from_jwks(cls, jwks: dict[str, Any]) -> KeySet:
        """A key set holding the keys of `jwks`."""
        keys = cls.__new__(cls)
        keys.source = "inline"
        keys._lock = threading.Lock()
        keys._keys = _jwks(jwks)
        keys._fetched = time.monotonic()
        return keys

    def keys(self, kid: str | None = None) -> list[dict[str, Any]]:
        """The JWKs to try for a token whose header names `kid`."""
        if self.source.startswith(("https://", "http://")):
            self._refresh(kid)
        if kid is None:
            return list(self._keys)
        named = [k for k in self._keys if k.get("kid") == kid]
        return named or [k for k in self._keys if "kid" not in k]

    def _refresh(self, kid: str | None) -> None:
        with self._lock:
            age = time.monotonic() - self._fetched
            unknown = kid is not None and all(k.get("kid") != kid for k in self._keys)
            fresh = age < JWKS_REFRESH_SECONDS
            if self._keys and fresh and not (unknown and age > JWKS_MIN_REFETCH):
                return
            try:
                with urllib.request.urlopen(self.source, timeout=10) as rsp:  # noqa: S310
                    self._keys = _jwks(json.loads(rsp.read()))
            except (OSError, ValueError) as exc:
                logger.error("JWKS not fetched", extra={"error": str(exc)})
            else:
                logger.info("JWKS fetched", extra={"keys": len(self._keys)})
            self._fetched = time.monotonic()


class TokenVerifier:
    """Checks bearer tokens against keys, issuer, audience and algorithms.

    Parameters
    ----------
    keys : KeySet
        Where the verification keys come from.
    issuer, audience : str
        The required ``iss`` and one required value of ``aud``.
    algorithms : sequence of str
        The allow-list.
    roles_claim : str
        The claim holding the roles (a list, or a space-separated string).
    leeway : int
        Clock skew tolerated on ``exp`` and ``nbf``, at most 30 s.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        roles_claim: str = "roles",
        leeway: int = MAX_LEEWAY,
    ) -> None:
        if "none" in {a.lower() for a in algorithms}:
            raise ValueError("the 'none' algorithm can never be allowed")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.roles_claim = roles_claim
        self.leeway = min(leeway, MAX_LEEWAY)

    def verify(self, token: str) -> Principal:
        """Return the principal of a valid token.

        Raises
        ------
        TokenError
            With a short reason safe to log (never the token itself).
        """
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise TokenError("malformed token") from exc
        alg = str(header.get("alg", ""))
        if alg not in self.algorithms:
            raise TokenError(f"algorithm {alg or 'none'} not allowed")
        candidates = [k for k in self.keys.keys(header.get("kid")) if _usable(k, alg)]
        if not candidates:
            raise TokenError("no configured key fits the token")
        last: Exception | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    options={
                        "require_aud": True,
                        "require_iss": True,
                        "require_exp": True,
                        "leeway": self.leeway,
                    },
                )
            except JOSEError as exc:
                last = exc
                continue
            return Principal(
                subject=str(claims.get("sub", "")),
                roles=frozenset(_roles(claims.get(self.roles_claim))),
                issuer=str(claims.get("iss", "")),
                claims=claims,
            )
        raise TokenError(_reason(last)) from last


def load_key_file(path: Path) -> list[dict[str, Any]]:
    """Read a PEM public key (or certificate) or a JWKS file as JWK dicts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from exc
    if text.lstrip().startswith("{"):
        return _jwks(json.loads(text))
    if "PRIVATE KEY" in text:
        raise ValueError(f"{path} holds a private key; give the public key")
    for alg in DEFAULT_ALGORITHMS:
        try:
            return [jwk.construct(text, alg).to_dict()]
        except JOSEError:
            continue
    raise ValueError(f"{path} is neither a JWKS nor an RSA or EC public key")


def _jwks(data: Any) -> list[dict[str, Any]]:
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError("a JWKS must be an object with a 'keys' list")
    return [dict(k) for k in keys]


def _usable(key: dict[str, Any], alg: str) -> bool:
    kty = key.get("kty")
    if alg in HMAC_ALGORITHMS:
        return kty == "oct"
    if alg.startswith(("RS", "PS")):
        return kty == "RSA"
    if alg.startswith("ES"):
        return kty == "EC"
    return False


def _roles(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _reason(exc: Exception | None) -> str:
    text = str(exc or "invalid token").lower()
    for needle, reason in (
        ("expired", "token expired"),
        ("not yet valid", "token not yet valid"),
        ("audience", "wrong or missing audience"),
        ("issuer", "wrong issuer"),
        ("signature", "bad signature"),
    ):
        if needle in text:
            return reason
    return "invalid token"
