"""Development tokens for the embedded default, signed with a key of the data dir.

Without an identity provider configured, ``spiders serve`` accepts tokens signed
with an ES256 key generated once in the data directory
(``dev-jwt-key.pem``, readable by its owner only), and ``spiders token`` mints
them. Anyone who can read the data directory can mint tokens: this is for one
machine and demonstrations, not for production, where ``SPIDERS_JWT_KEYS``
names the identity provider's keys and minting is refused.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

KEY_FILE = "dev-jwt-key.pem"
DEV_ISSUER = "urn:spiders:dev"
DEV_AUDIENCE = "spiders"
KEY_ID = "spiders-dev-1"


def private_key_pem(data_dir: Path) -> bytes:
    """The development private key, created on first use (mode 0600)."""
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_bytes()
    try:
        os.write(fd, pem)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return pem


def public_jwks(data_dir: Path) -> dict[str, Any]:
    """The development key's public half as a JWKS."""
    private = serialization.load_pem_private_key(private_key_pem(data_dir), None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = jwk.construct(public.decode(), "ES256").to_dict()
    key.update({"kid": KEY_ID, "use": "sig", "alg": "ES256"})
    return {"keys": [key]}


def mint(
    data_dir: Path,
    roles: Iterable[str],
    *,
    subject: str = "dev-user",
    lifetime: int = 8 * 3600,
    audience: str = DEV_AUDIENCE,
    issuer: str = DEV_ISSUER,
) -> str:
    """A development access token carrying `roles`."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
        "roles": sorted(set(roles)),
    }
    return str(
        jwt.encode(
            claims,
            private_key_pem(data_dir).decode(),
            algorithm="ES256",
            headers={"kid": KEY_ID},
        )
    )
