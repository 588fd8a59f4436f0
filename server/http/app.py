"""Flask application factory and the error handlers that speak FHIR.

Every error leaves as an OperationOutcome with the status the error tree
assigns (:mod:`server.errors`); an unexpected exception is logged with its
traceback and answered 500, never as an HTML page.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from server import runtime
from server.errors import Forbidden, InputError, SpidersError, Unauthorized
from server.http import api, audit_events, fhir
from server.http.auth import logged_route
from server.runtime import Runtime

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def create_app(rt: Runtime | None = None) -> Flask:
    """Build the WSGI application.

    Parameters
    ----------
    rt : Runtime, optional
        The runtime to serve; by default the process's (:func:`runtime.current`).
    """
    app = Flask("spiders")
    app.config["SPIDERS_RUNTIME"] = rt or runtime.current()
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(fhir.bp, url_prefix="/fhir")
    app.register_blueprint(api.bp, url_prefix="/api")
    app.register_blueprint(audit_events.bp, url_prefix="/fhir")
    app.register_blueprint(audit_events.trail_bp, url_prefix="/api")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    app.register_error_handler(SpidersError, _spiders_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def operation_outcome(
    status: int, code: str, issues: list[tuple[str | None, str]]
) -> Response:
    """An OperationOutcome response with one issue per (expression, text)."""
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code,
                "diagnostics": text,
                **({"expression": [expr]} if expr else {}),
            }
            for expr, text in issues
        ],
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = FHIR_JSON
    return response


def _spiders_error(exc: SpidersError) -> Response:
    issues: list[tuple[str | None, str]] = (
        exc.issues if isinstance(exc, InputError) else [(None, str(exc))]
    )
    logger.info(
        "request refused",
        extra={
            "status": exc.http_status,
            "error": type(exc).__name__,
            "route": logged_route(),
        },
    )
    response = operation_outcome(exc.http_status, exc.fhir_code, issues)
    if isinstance(exc, (Unauthorized, Forbidden)):
        description = str(exc).replace("\\", "").replace('"', "'")
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="spiders", error="{exc.bearer_error}", '
            f'error_description="{description}"'
        )
    return response


def _http_error(exc: HTTPException) -> Response:
    code = {
        404: "not-found",
        405: "not-supported",
        413: "too-long",
        415: "not-supported",
    }.get(exc.code or 500, "invalid")
    return operation_outcome(exc.code or 500, code, [(None, exc.description or "")])


def _unexpected(exc: Exception) -> Response:
    logger.error(
        "unexpected error while serving a request",
        exc_info=exc,
        extra={"route": logged_route()},
    )
    return operation_outcome(500, "exception", [(None, "internal error")])
