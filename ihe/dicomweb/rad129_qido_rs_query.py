"""RAD-129 QIDO-RS Query: search for a patient's studies over DICOMweb.

IHE RAD TF-2 4.129 and DICOM PS3.18 10.6 (Search Transaction): ``GET
{base}/studies?PatientID=...&includefield=...`` with ``Accept:
application/dicom+json``; the answer is a DICOM JSON array (PS3.18 F.2) mapped
to the same :class:`~mappings.dicom_study.StudyFound` as a C-FIND response.
``200`` with an array and ``204 No Content`` (older editions' "no match") are
both answers; any other status, a time-out, a TLS or connection failure is a
:class:`~server.errors.PeerError`, as a failed C-FIND is.

As with C-FIND, hints become extra narrowed searches beside the broad one:
the hinted Study Instance UIDs as one UID list (comma-separated, PS3.18
8.3.4.1) and one search per accession number, PatientID always a key. The
PatientID of every answer is checked again on our side.

:func:`ping` asks for one study to tell whether a DICOMweb endpoint answers.
For the prefetch, :func:`search_for_series` lists a study's series with their
instance counts and :func:`search_for_instances` a series' SOP Instance UIDs,
the DICOMweb equivalents of the SERIES- and IMAGE-level C-FINDs.

Limitations
-----------
No paging: a server that truncates its answer (``Warning: 299``) is logged
and its first page kept; the narrowed searches still find hinted studies,
and a truncated instance list is noticed by the prefetch against the series
count. An
answer larger than 32 MiB is refused. The auth header is sent as configured
(no token refresh).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import requests

from ihe.dicom.sop_classes import StudyRootQueryRetrieveInformationModelFind
from mappings.dicom_study import JSON_TAGS, QueryResult, StudyFound, study_from_json
from server.errors import PeerError

logger = logging.getLogger(__name__)

LOG_SEARCH_DONE = "qido-rs search done"
MEDIA_TYPE = "application/dicom+json"
# The audit trail names the Study Root FIND SOP class for QIDO-RS too (the
# search is its DICOMweb equivalent).
SOP_CLASS = str(StudyRootQueryRetrieveInformationModelFind)
INCLUDE_FIELDS = ",".join(tag for tag in JSON_TAGS.values())
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_HINTS = 20
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    """A DICOMweb service: base URL, credentials and how to reach it.

    Attributes
    ----------
    url : str
        The service's base URL, e.g. ``https://pacs.example/dicom-web``.
    auth_header : str or None
        The whole ``Authorization`` header value (``Basic ...``, ``Bearer ...``).
    ca : Path or None
        CA file the server certificate must chain to; system CAs when None.
    cert, key : Path or None
        Our client certificate, when the server asks for one.
    timeout : float
        Seconds to connect and between bytes of the answer.
    """

    url: str
    auth_header: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class Ping:
    """A DICOMweb endpoint's answer to a one-study search."""

    status: int
    latency_ms: float


def search_for_studies(
    endpoint: Endpoint,
    patient_id: str,
    *,
    study_uids: Sequence[str] = (),
    accession_numbers: Sequence[str] = (),
) -> QueryResult:
    """Find the studies of `patient_id` at one DICOMweb service.

    Raises
    ------
    PeerError
        An HTTP status other than 200 or 204, an answer that is not DICOM
        JSON, a time-out, a TLS or connection failure.
    """
    found: dict[str, StudyFound] = {}
    ignored = 0
    sent: list[bytes] = []
    with requests.Session() as http:
        for params in _searches(patient_id, study_uids, accession_numbers):
            url = f"{endpoint.url.rstrip('/')}/studies?{urlencode(params)}"
            sent.append(url.encode())
            for obj in _get_json(http, endpoint, url):
                study = study_from_json(obj) if isinstance(obj, Mapping) else None
                if study is None or study.patient_id != patient_id:
                    ignored += 1
                    continue
                found.setdefault(study.study_uid, study)
    if ignored:
        logger.warning(
            "responses for another patient ignored",
            extra={"url": endpoint.url, "ignored": ignored},
        )
    logger.info(LOG_SEARCH_DONE, extra={"url": endpoint.url, "studies": len(found)})
    return QueryResult(tuple(found.values()), ignored, tuple(sent), SOP_CLASS)


def ping(endpoint: Endpoint) -> Ping:
    """Search for one study, to tell whether the endpoint answers.

    Raises
    ------
    PeerError
        No HTTP answer, or a status other than 200 or 204.
    """
    url = f"{endpoint.url.rstrip('/')}/studies?limit=1"
    started = time.monotonic()
    with requests.Session() as http:
        response = _get(http, endpoint, url)
        response.close()
    return Ping(response.status_code, (time.monotonic() - started) * 1000)


def _searches(
    patient_id: str, study_uids: Sequence[str], accession_numbers: Sequence[str]
) -> Iterator[dict[str, str]]:
    base = {"PatientID": patient_id, "includefield": INCLUDE_FIELDS}
    yield {**base, "fuzzymatching": "false"}
    uids = list(dict.fromkeys(u for u in study_uids if u))[:MAX_HINTS]
    if uids:
        yield {**base, "StudyInstanceUID": ",".join(uids)}
    accessions = [
        a
        for a in dict.fromkeys(a.strip() for a in accession_numbers)
        if a and not set(a) & {"*", "?", "\\", ","}
    ][:MAX_HINTS]
    for accession in accessions:
        yield {**base, "AccessionNumber": accession}


def http_get(
    http: requests.Session, endpoint: Endpoint, url: str, accept: str
) -> requests.Response:
    """GET `url` of `endpoint` with its credentials, TLS files and time-out.

    The answer is streamed and a redirect is not followed. The RAD-107 client
    (:mod:`ihe.dicomweb.rad107_wado_rs_retrieve`) sends its requests so too.

    Raises
    ------
    requests.RequestException
        No answer: each caller says what that means to it.
    """
    headers = {"Accept": accept}
    if endpoint.auth_header:
        headers["Authorization"] = endpoint.auth_header
    cert = (
        (str(endpoint.cert), str(endpoint.key))
        if endpoint.cert is not None and endpoint.key is not None
        else None
    )
    return http.get(
        url,
        headers=headers,
        timeout=endpoint.timeout,
        verify=str(endpoint.ca) if endpoint.ca is not None else True,
        cert=cert,
        stream=True,
        allow_redirects=False,
    )


def _get(http: requests.Session, endpoint: Endpoint, url: str) -> requests.Response:
    try:
        response = http_get(http, endpoint, url, MEDIA_TYPE)
    except requests.Timeout as exc:
        raise PeerError(f"{endpoint.url} did not answer in time") from exc
    except requests.exceptions.SSLError as exc:
        raise PeerError(f"TLS with {endpoint.url} failed") from exc
    except requests.RequestException as exc:
        raise PeerError(f"{endpoint.url} unreachable") from exc
    if response.status_code not in (200, 204):
        response.close()
        raise PeerError(
            f"QIDO-RS at {endpoint.url} answered HTTP {response.status_code}"
        )
    return response


def _get_json(http: requests.Session, endpoint: Endpoint, url: str) -> list[Any]:
    response = _get(http, endpoint, url)
    with response:
        if response.status_code == 204:
            return []
        if response.headers.get("Warning", "").startswith("299"):
            logger.warning("qido-rs answer has a warning", extra={"url": endpoint.url})
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise PeerError(f"QIDO-RS answer from {endpoint.url} too large")
        except requests.RequestException as exc:
            raise PeerError(f"{endpoint.url} broke off its answer") from exc
    if not body.strip():
        return []
    try:
        answer = json.loads(bytes(body))
    except ValueError as exc:
        raise PeerError(f"QIDO-RS answer from {endpoint.url} is not JSON") from exc
    if not isinstance(answer, list):
        raise PeerError(f"QIDO-RS answer from {endpoint.url} is not a JSON array")
    return answer


LOG_SERIES_SEARCH_DONE = "qido-rs series search done"
LOG_INSTANCE_SEARCH_DONE = "qido-rs instance search done"
SERIES_UID_TAG = "0020000E"
SOP_INSTANCE_UID_TAG = "00080018"
SERIES_INSTANCES_TAG = "00201209"


def search_for_series(endpoint: Endpoint, study_uid: str) -> dict[str, int | None]:
    """The series of one study and their instance counts (PS3.18 10.6.1.2).

    ``GET {base}/studies/{study}/series`` with Number of Series Related
    Instances (0020,1209) as an include field. A series whose count the
    service leaves out maps to ``None``.

    Raises
    ------
    PeerError
        As :func:`search_for_studies`.
    """
    url = (
        f"{_study_url(endpoint, study_uid)}/series?"
        f"{urlencode({'includefield': SERIES_INSTANCES_TAG})}"
    )
    series: dict[str, int | None] = {}
    with requests.Session() as http:
        for obj in _get_json(http, endpoint, url):
            uid = _first(obj, SERIES_UID_TAG)
            if uid:
                series[uid] = _count(_first(obj, SERIES_INSTANCES_TAG))
    logger.info(LOG_SERIES_SEARCH_DONE, extra={"series": len(series)})
    return series


def search_for_instances(
    endpoint: Endpoint, study_uid: str, series_uid: str
) -> list[str]:
    """The SOP Instance UIDs of one series (PS3.18 10.6.1.2).

    ``GET {base}/studies/{study}/series/{series}/instances``; a UID answered
    twice is kept once, in the order the service answered.

    Raises
    ------
    PeerError
        As :func:`search_for_studies`.
    """
    url = (
        f"{_study_url(endpoint, study_uid)}/series/{quote(series_uid, safe='')}"
        f"/instances?{urlencode({'includefield': SOP_INSTANCE_UID_TAG})}"
    )
    uids: dict[str, None] = {}
    with requests.Session() as http:
        for obj in _get_json(http, endpoint, url):
            uid = _first(obj, SOP_INSTANCE_UID_TAG)
            if uid:
                uids[uid] = None
    logger.info(LOG_INSTANCE_SEARCH_DONE, extra={"instances": len(uids)})
    return list(uids)


def _study_url(endpoint: Endpoint, study_uid: str) -> str:
    return f"{endpoint.url.rstrip('/')}/studies/{quote(study_uid, safe='')}"


def _first(obj: object, tag: str) -> str | None:
    """The first value of `tag` in one DICOM JSON object, as text."""
    if not isinstance(obj, Mapping):
        return None
    element = obj.get(tag)
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not isinstance(values, list) or not values or values[0] is None:
        return None
    text = str(values[0]).strip()
    return text or None


def _count(value: str | None) -> int | None:
    try:
        count = int(value) if value is not None else None
    except ValueError:
        return None
    return count if count is None or count >= 0 else None
