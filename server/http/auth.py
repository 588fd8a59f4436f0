"""Bearer-token authentication and role checks for the HTTP endpoints.

Every endpoint except ``/fhir/metadata`` and ``/healthz`` is wrapped with
:func:`requires`, naming the roles it admits. A missing or invalid token is
answered 401 with ``WWW-Authenticate: Bearer error="invalid_token"``; a valid
token without an admitted role 403 with ``error="insufficient_scope"``. Both
are audited. The token is never logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import current_app, g, request

from ihe.atna import messages
from ihe.atna.codes import EventTypeCode
from ihe.iua.roles import Role
from ihe.iua.tokens import Principal, TokenError
from server import audit
from server.errors import Forbidden, Unauthorized
from server.runtime import Runtime

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def requires(*roles: Role) -> Callable[[F], F]:
    """Admit callers whose token carries at least one of `roles`."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.principal = authenticate(roles)
            return view(*args, **kwargs)

        wrapper.spiders_roles = roles  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def authenticate(roles: tuple[Role, ...]) -> Principal:
    """The caller's principal, or raise :class:`Unauthorized` / :class:`Forbidden`."""
    rt = cast(Runtime, current_app.config["SPIDERS_RUNTIME"])
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _audit_refused(rt, None, "no bearer token")
        raise Unauthorized("a bearer token is required")
    try:
        principal = rt.token_verifier.verify(token.strip())
    except TokenError as exc:
        logger.warning(
            "token refused", extra={"reason": str(exc), "route": logged_route()}
        )
        _audit_refused(rt, None, str(exc))
        raise Unauthorized(f"invalid token: {exc}") from exc
    if not principal.has_any(roles):
        logger.warning(
            "role refused",
            extra={"route": logged_route(), "subject": principal.subject},
        )
        _audit_refused(rt, principal.subject, "the token lacks the endpoint's roles")
        raise Forbidden(
            "this endpoint needs one of the roles: " + ", ".join(sorted(roles))
        )
    if _first_use(token.strip()):
        _audit_login(rt, principal)
    return principal


_seen_lock = threading.Lock()
_seen: OrderedDict[str, None] = OrderedDict()
SEEN_TOKENS = 10_000


def _first_use(token: str) -> bool:
    """True the first time this process sees `token` (bounded memory)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    with _seen_lock:
        if digest in _seen:
            _seen.move_to_end(digest)
            return False
        _seen[digest] = None
        if len(_seen) > SEEN_TOKENS:
            _seen.popitem(last=False)
        return True


def _audit_login(rt: Runtime, principal: Principal) -> None:
    """User Authentication (110114): a bearer token used here for the first time.

    With bearer tokens the login happens at the identity provider; SPIDERS
    records the first request each token authenticates.
    """
    try:
        with rt.db.session() as session:
            audit.user_authentication(
                session,
                rt.settings,
                user=principal.subject,
                address=request.remote_addr,
            )
    except Exception:
        logger.exception("user authentication not recorded")


def _audit_refused(rt: Runtime, subject: str | None, reason: str) -> None:
    """Security Alert (110113) for a refused request; never fails the answer.

    Without a valid token the event type is Node Authentication (110126); a
    valid token without the role is Use of Restricted Function (110132).
    """
    alert = (
        EventTypeCode.NODE_AUTHENTICATION
        if subject is None
        else EventTypeCode.USE_OF_RESTRICTED_FUNCTION
    )
    try:
        with rt.db.session() as session:
            audit.security_alert(
                session,
                rt.settings,
                alert_type=alert,
                subject=f"{request.method} {request.path}",
                description=f"HTTP request refused: {reason}",
                peer=audit.http_client(subject, request.remote_addr),
            )
    except Exception:
        logger.exception("security alert not recorded")


def caller() -> str:
    """The authenticated subject, for audit records."""
    principal = g.get("principal")
    return principal.subject if principal is not None else "anonymous"


def audit_requestor() -> messages.Participant:
    """The caller as the requesting participant of an audit message."""
    return audit.http_client(caller(), request.remote_addr)


def logged_route() -> str:
    """The request's method and route template, for logs.

    A path may carry a patient's identifier (``/fhir/Patient/A100`` sent by
    mistake with a hospital number); the template never does.
    """
    rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
    return f"{request.method} {rule}"
