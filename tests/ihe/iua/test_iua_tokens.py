"""Bearer-token checks: the attack suite and field case C23, through HTTP.

Each refused token is answered 401 with ``WWW-Authenticate: Bearer
error="invalid_token"`` and no resource; a valid token without the role 403
``insufficient_scope``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from jose import jwt

from ihe.iua.tokens import KeySet, TokenError, TokenVerifier, load_key_file
from server import runtime
from server.config import load_settings
from server.http.app import create_app
from server.runtime import Runtime

ISSUER = "https://idp.region.invalid/realms/rcp"
AUDIENCE = "urn:spiders:test"
DATA = Path(__file__).parent.parent.parent / "data"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


class IdP:
    """An identity provider of the test: an RSA key and its public PEM."""

    def __init__(self, tmp: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = self.key.public_key()
        self.public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tmp.mkdir(parents=True, exist_ok=True)
        self.pem_path = tmp / "idp-public.pem"
        self.pem_path.write_bytes(self.public_pem)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "dr-martin",
            "iat": now,
            "exp": now + 300,
            "roles": ["coordinator"],
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **changes: Any) -> str:
        return str(jwt.encode(self.claims(**changes), self.private_pem, "RS256"))


@pytest.fixture
def idp(tmp_path: Path) -> IdP:
    return IdP(tmp_path)


@pytest.fixture
def idp_client(idp: IdP, tmp_path: Path) -> Iterator[FlaskClient]:
    settings = load_settings(
        {
            "SPIDERS_DATA_DIR": str(tmp_path / "var"),
            "SPIDERS_JWT_KEYS": str(idp.pem_path),
            "SPIDERS_JWT_ISSUER": ISSUER,
            "SPIDERS_JWT_AUDIENCE": AUDIENCE,
        }
    )
    rt = Runtime(settings)
    runtime.install(rt)
    try:
        yield create_app(rt).test_client()
    finally:
        runtime.install(None)
        rt.db.dispose()


def call(client: FlaskClient, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/api/registrations", headers=headers)


def assert_refused(rsp: Any, status: int = 401, error: str = "invalid_token") -> None:
    assert rsp.status_code == status, rsp.get_data(as_text=True)
    challenge = rsp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'error="{error}"' in challenge
    body = rsp.get_json()
    assert body["resourceType"] == "OperationOutcome"


def test_token_valid_rs256_accepted(idp: IdP, idp_client: FlaskClient) -> None:
    rsp = call(idp_client, idp.token())
    assert rsp.status_code == 200
    assert rsp.get_json() == []


def test_token_missing_401(idp_client: FlaskClient) -> None:
    assert_refused(call(idp_client, None))
    assert_refused(
        idp_client.get(
            "/api/registrations", headers={"Authorization": "Basic dXNlcjpwdw=="}
        )
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": int(time.time()) - 120},
        {"aud": "urn:other-service"},
        {"aud": None},
        {"iss": "https://idp.other.invalid"},
        {"iss": None},
        {"exp": None},
        {"nbf": int(time.time()) + 600},
    ],
    ids=[
        "expired",
        "wrong-aud",
        "no-aud",
        "wrong-iss",
        "no-iss",
        "no-exp",
        "not-yet-valid",
    ],
)
def test_token_bad_claims_401(
    idp: IdP, idp_client: FlaskClient, changes: dict[str, Any]
) -> None:
    assert_refused(call(idp_client, idp.token(**changes)))


def test_token_expired_within_leeway_accepted(
    idp: IdP, idp_client: FlaskClient
) -> None:
    assert call(idp_client, idp.token(exp=int(time.time()) - 10)).status_code == 200


def test_token_alg_none_401(idp: IdP, idp_client: FlaskClient) -> None:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(idp.claims()).encode())
    assert_refused(call(idp_client, f"{head}.{body}."))


@pytest.mark.parametrize("form", ["pem", "der"])
def test_token_hmac_signed_with_public_key_401(
    idp: IdP, idp_client: FlaskClient, form: str
) -> None:
    secret = idp.public_pem if form == "pem" else idp.public_der
    assert_refused(call(idp_client, hs256(idp.claims(), secret)))


def test_token_tampered_payload_401(idp: IdP, idp_client: FlaskClient) -> None:
    head, _, signature = idp.token().split(".")
    forged = b64(json.dumps(idp.claims(roles=["security-officer"])).encode())
    assert_refused(call(idp_client, f"{head}.{forged}.{signature}"))


def test_token_signed_by_another_key_401(
    idp: IdP, idp_client: FlaskClient, tmp_path: Path
) -> None:
    other = IdP(tmp_path / "other")
    assert_refused(call(idp_client, other.token()))


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "....", "é.é.é"])
def test_token_malformed_401(idp_client: FlaskClient, token: str) -> None:
    assert_refused(call(idp_client, token))


def test_token_wrong_role_403(idp: IdP, idp_client: FlaskClient) -> None:
    rsp = call(idp_client, idp.token(roles=["security-officer"]))
    assert_refused(rsp, 403, "insufficient_scope")


def test_token_roles_as_space_separated_string(
    idp: IdP, idp_client: FlaskClient
) -> None:
    assert call(idp_client, idp.token(roles="radiologist system")).status_code == 200


def test_metadata_and_health_need_no_token(idp_client: FlaskClient) -> None:
    assert idp_client.get("/fhir/metadata").status_code == 200
    assert idp_client.get("/healthz").status_code == 200


def test_every_other_endpoint_requires_a_token(idp_client: FlaskClient) -> None:
    app = idp_client.application
    open_endpoints = {"fhir.metadata", "healthz", "static"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in open_endpoints:
            continue
        view = app.view_functions[rule.endpoint]
        assert getattr(view, "spiders_roles", None), f"{rule} has no role check"
        # Any value for each variable: "<int:candidate_id>" becomes "1".
        path = re.sub(
            r"<(?:(\w+):)?(\w+)>",
            lambda m: "1" if m.group(1) == "int" else m.group(2),
            rule.rule,
        )
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            rsp = idp_client.open(path, method=method)
            assert rsp.status_code == 401, f"{method} {path}"


def load_c23() -> Any:
    spec = importlib.util.spec_from_file_location(
        "c23", DATA / "C23-jwt-claim-checks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_c23_claim_checks_each_token_as_expected(tmp_path: Path) -> None:
    c23 = load_c23()
    secret = b64(c23.SECRET.encode())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": secret}]}))
    verifier = TokenVerifier(
        KeySet(str(jwks)),
        issuer=c23.ISSUER,
        audience=c23.AUDIENCE,
        algorithms=["HS256"],
    )
    results = {}
    for name, (token, _expected) in c23.tokens().items():
        try:
            verifier.verify(token)
            results[name] = "accept"
        except TokenError:
            results[name] = "reject"
    assert results == {name: expected for name, (_, expected) in c23.tokens().items()}
    accepted = {name for name, result in results.items() if result == "accept"}
    assert accepted == {
        "T1_valid",
        "T4_aud_list_containing_ours",
        "T6_expired_10s_ago_within_leeway",
    }


def test_verifier_never_allows_none() -> None:
    with pytest.raises(ValueError, match="none"):
        TokenVerifier(
            KeySet.from_jwks({"keys": []}),
            issuer="i",
            audience="a",
            algorithms=["RS256", "none"],
        )


def test_key_file_private_key_refused(idp: IdP, tmp_path: Path) -> None:
    path = tmp_path / "private.pem"
    path.write_text(idp.private_pem)
    with pytest.raises(ValueError, match="private key"):
        load_key_file(path)


def test_dev_tokens_refused_when_an_idp_is_configured(
    idp_client: FlaskClient, rt: Runtime
) -> None:
    from tests.conftest import token_for

    assert_refused(call(idp_client, token_for(rt, "coordinator")))


def test_refused_requests_are_audited_as_security_alerts(
    anonymous: FlaskClient, rt: Runtime
) -> None:
    from sqlalchemy import select

    from server.models import AuditRecord
    from tests.audit_schema import assert_valid_audit
    from tests.conftest import auth_headers

    assert anonymous.get("/api/registrations").status_code == 401
    assert (
        anonymous.get(
            "/api/registrations", headers={"Authorization": "Bearer x.y.z"}
        ).status_code
        == 401
    )
    assert (
        anonymous.get(
            "/api/registrations", headers=auth_headers(rt, "security-officer")
        ).status_code
        == 403
    )
    with rt.db.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        alerts = [r for r in rows if r.event_id == "110113"]
        assert len(alerts) == 3
        for record in alerts:
            assert_valid_audit(record.xml.encode())
            assert "GET /api/registrations" in record.xml
        assert 'csd-code="110126"' in alerts[0].xml
        assert 'csd-code="110126"' in alerts[1].xml
        assert 'csd-code="110132"' in alerts[2].xml
        assert "x.y.z" not in "".join(r.xml for r in rows)


def test_jwks_url_keys_fetched_and_used(idp: IdP, tmp_path: Path) -> None:
    import http.server
    import threading

    from jose import jwk

    key = jwk.construct(idp.public_pem.decode(), "RS256").to_dict()
    key["kid"] = "idp-1"
    body = json.dumps({"keys": [key]}).encode()
    fetched: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/realms/rcp/certs"
        verifier = TokenVerifier(KeySet(url), issuer=ISSUER, audience=AUDIENCE)
        token = str(
            jwt.encode(idp.claims(), idp.private_pem, "RS256", headers={"kid": "idp-1"})
        )
        assert verifier.verify(token).subject == "dr-martin"
        assert verifier.verify(token).roles == frozenset({"coordinator"})
        assert fetched == ["/realms/rcp/certs"]  # fetched once, then cached
        other = IdP(tmp_path / "other")
        with pytest.raises(TokenError):
            verifier.verify(other.token())
    finally:
        server.shutdown()
        server.server_close()


def test_leeway_never_above_30_seconds(idp: IdP) -> None:
    verifier = TokenVerifier(
        KeySet(str(idp.pem_path)), issuer=ISSUER, audience=AUDIENCE, leeway=300
    )
    assert verifier.leeway == 30
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(idp.token(exp=int(time.time()) - 40))


def test_custom_roles_claim_read(idp: IdP) -> None:
    verifier = TokenVerifier(
        KeySet(str(idp.pem_path)),
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim="spiders_roles",
    )
    token = idp.token(roles=None, spiders_roles=["radiologist"])
    assert verifier.verify(token).roles == frozenset({"radiologist"})


def test_hmac_token_refused_even_when_hs256_allowed_with_an_rsa_key(idp: IdP) -> None:
    verifier = TokenVerifier(
        KeySet(str(idp.pem_path)),
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256", "HS256"],
    )
    for secret in (idp.public_pem, idp.public_der):
        with pytest.raises(TokenError, match="no configured key fits"):
            verifier.verify(hs256(idp.claims(), secret))
