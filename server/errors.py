"""The one error tree of SPIDERS.

Every exception raised on purpose by SPIDERS derives from :class:`SpidersError`.
Each branch says what the peer on the other side sees when it reaches an edge
(the HTTP error handler, the DIMSE handler wrapper, the HL7 acknowledgement
builder); code in between never translates, it raises and chains with
``raise ... from exc``::

    SpidersError
    ├── ConfigurationError          bad settings or sites file; the command exits 2
    ├── InputError                  the request itself is wrong
    │   ├── UnsupportedMediaType    FHIR 415: the body is not JSON
    │   ├── InvalidResource         FHIR 400/422 with an OperationOutcome
    │   ├── UnknownReference        FHIR 422, a reference to nothing we know;
    │   │                           HL7 ACK AE, ERR-3 204
    │   ├── UnknownDomain           FHIR 400 code-invalid: an assigning authority
    │   │                           we do not recognise (ITI-83 sourceIdentifier)
    │   ├── UnknownTargetDomain     FHIR 403 code-invalid: ITI-83 targetSystem
    │   │                           not recognised
    │   ├── NotAcceptable           FHIR 406 not-supported: a _format we do
    │   │                           not produce
    │   └── MessageError            HL7 ACK AE with ERR (table 0357 code, location)
    │       └── MessageRejected     HL7 ACK AR: unsupported type, event, version
    ├── Unauthorized                401, Bearer error="invalid_token"
    ├── Forbidden                   403, Bearer error="insufficient_scope"
    ├── NotFound                    FHIR 404 with an OperationOutcome
    ├── Conflict                    FHIR 409: the state forbids the change;
    │                               HL7 ACK AE, ERR-3 205
    ├── IdentityError               the patient index refuses to link or resolve;
    │                               FHIR 409, HL7 ACK AE with ERR-3 205
    ├── StoreRefused                DICOM C-STORE 0xC000 with an Error Comment
    └── PeerError                   a remote system failed us
        ├── AssociationFailed       DICOM association rejected, aborted or refused
        ├── DimseFailure            DIMSE failure status from a peer
        └── PixQueryError           the region's PIX Manager refused a query
            │                       (HL7 AE/AR with ERR, HTTP 4xx)
            └── UnknownPixDomainError  it does not know one of our domains

``issues`` on an :class:`InputError` is a list of ``(expression, message)`` pairs
that becomes one OperationOutcome issue each.
"""

from __future__ import annotations

from collections.abc import Sequence


class SpidersError(Exception):
    """Base of every error SPIDERS raises on purpose."""

    http_status = 500
    fhir_code = "exception"


class ConfigurationError(SpidersError):
    """The settings or the sites file cannot be used as written."""


class InputError(SpidersError):
    """The caller sent something we cannot accept.

    Parameters
    ----------
    message : str
        One sentence for the caller.
    issues : sequence of (str or None, str), optional
        Per-element problems as ``(FHIRPath expression, message)``.
    """

    http_status = 400
    fhir_code = "invalid"

    def __init__(
        self, message: str, issues: Sequence[tuple[str | None, str]] = ()
    ) -> None:
        super().__init__(message)
        self.issues: list[tuple[str | None, str]] = list(issues) or [(None, message)]


class UnsupportedMediaType(InputError):
    """A body in a media type the endpoint does not read."""

    http_status = 415
    fhir_code = "not-supported"


class InvalidResource(InputError):
    """A FHIR resource that parses but breaks the specification or a rule."""

    http_status = 422
    fhir_code = "invalid"


class UnknownReference(InputError):
    """A reference to a resource or identifier the server does not hold."""

    http_status = 422
    fhir_code = "not-found"


class UnknownDomain(InputError):
    """An assigning authority (patient identifier domain) we do not recognise."""

    http_status = 400
    fhir_code = "code-invalid"


class UnknownTargetDomain(InputError):
    """A requested target domain we do not recognise (IHE ITI-83 answers 403)."""

    http_status = 403
    fhir_code = "code-invalid"


class NotAcceptable(InputError):
    """A response format (``_format``) the server does not produce."""

    http_status = 406
    fhir_code = "not-supported"


class Unauthorized(SpidersError):
    """No valid bearer token: missing, malformed, expired, or not ours."""

    http_status = 401
    fhir_code = "login"
    bearer_error = "invalid_token"


class Forbidden(SpidersError):
    """A valid token without any of the roles the endpoint requires."""

    http_status = 403
    fhir_code = "forbidden"
    bearer_error = "insufficient_scope"


class MessageError(InputError):
    """An HL7 v2 message that cannot be accepted as sent: ``AE`` with ERR.

    Parameters
    ----------
    message : str
        One sentence for the sender (ERR-8); never patient data.
    code : int
        The HL7 table 0357 error code (ERR-3).
    location : tuple of str or int
        The error location (ERR-2, ERL): segment ID, sequence, field,
        repetition, component, subcomponent, as many as known.
    """

    def __init__(
        self, message: str, code: int, location: Sequence[str | int] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.location: tuple[str | int, ...] = tuple(location)


class MessageRejected(MessageError):
    """An HL7 v2 message refused unprocessed: ``AR`` with ERR."""


class NotFound(SpidersError):
    """The addressed resource does not exist."""

    http_status = 404
    fhir_code = "not-found"


class Conflict(SpidersError):
    """The resource's current state forbids the requested change."""

    http_status = 409
    fhir_code = "conflict"


class IdentityError(SpidersError):
    """The patient index refuses to link or resolve identifiers."""

    http_status = 409
    fhir_code = "conflict"


class StoreRefused(SpidersError):
    """An instance the cache will not store (not a UID, or a UID already held
    for another study or patient); ``str()`` is the Error Comment."""

    http_status = 422
    fhir_code = "invalid"


class PeerError(SpidersError):
    """A remote system (PACS, console, registry) failed us."""

    http_status = 502
    fhir_code = "transient"


class AssociationFailed(PeerError):
    """A DICOM association could not be established or was aborted."""


class DimseFailure(PeerError):
    """A DIMSE service answered with a failure status.

    Parameters
    ----------
    message : str
        What failed.
    status : int
        The (0000,0900) Status value the peer sent.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PixQueryError(PeerError):
    """The PIX Manager refused the query (HL7 ``AE``/``AR``, HTTP 4xx).

    Parameters
    ----------
    message : str
        What was refused; never patient data.
    code : int, optional
        ERR-3 (HL7 table 0357) of the first error, for ITI-9.
    location : sequence of str or int
        ERR-2 of the first error, for ITI-9.
    status : int, optional
        The HTTP status, for ITI-83.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        location: Sequence[str | int] = (),
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.location: tuple[str | int, ...] = tuple(location)
        self.status = status


class UnknownPixDomainError(PixQueryError):
    """The PIX Manager does not recognise a domain of the query.

    ``domains`` names the domains it refused: the source identifier's, or
    the wanted ones it named (all of those asked when it did not say which).
    """

    def __init__(
        self,
        message: str,
        domains: Sequence[str],
        *,
        code: int | None = None,
        location: Sequence[str | int] = (),
        status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, location=location, status=status)
        self.domains = tuple(domains)
