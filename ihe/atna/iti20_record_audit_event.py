"""ITI-20 Record Audit Event: the syslog transport, Secure Node side.

An audit message travels as the MSG of an RFC 5424 syslog message::

    <85>1 2025-03-21T14:30:02.417+01:00 host SPIDERS 4711 IHE+RFC-3881 - <?xml...

PRI 85 is facility 10 (security/authorization) with severity 5 (notice), the
value IHE practice uses; VERSION 1; TIMESTAMP in RFC 3339 with the local
offset; MSGID ``IHE+RFC-3881`` names the DICOM PS3.15 XML payload;
STRUCTURED-DATA is the NILVALUE ``-``; MSG is the XML in UTF-8 without a byte
order mark (IHE CP-ITI-477).

Two transports carry it to an Audit Record Repository:

- TLS (RFC 5425), mutually authenticated, default port 6514: each message is
  framed by octet counting, ``MSG-LEN SP SYSLOG-MSG``, where MSG-LEN counts
  the bytes of the UTF-8 message, not its characters;
- UDP (RFC 5426): one message per datagram, no framing.

RFC 5425 has no acknowledgement. :class:`TlsTransport` therefore opens one
connection per batch and closes its side after the batch, then waits for the
repository to close its own: a repository that read the stream to its end has
received every message of the batch, and only then is the batch reported
sent. A repository that refuses our certificate lets the handshake complete
and then closes at once (rsyslog does); the transport waits twice the
handshake's duration, at least :data:`PROBE_MIN`, for such a close before
sending anything. A batch whose closing is not seen is reported failed and
sent again later, so a message can arrive twice but is never reported sent
without having been read.

:func:`read_frames` and :func:`parse_message` read frames and messages back,
for tests and diagnostics.

Limitations
-----------
UDP gives no delivery guarantee at all: a datagram sent while the repository
is down is lost, and only an ICMP "port unreachable" noticed on a later
datagram of the same batch reveals the outage. Messages larger than a UDP
datagram (65,507 bytes over IPv4) cannot be sent over UDP. Structured data
is never sent; :func:`parse_message` reads it as one string without
unescaping. Certificate revocation (CRL, OCSP) is not checked.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Protocol

logger = logging.getLogger(__name__)

# IHE ITI TF-2 3.20 (Record Audit Event): the MSGID of a DICOM PS3.15 message.
MSGID = "IHE+RFC-3881"
APP_NAME = "SPIDERS"
NILVALUE = "-"
VERSION = 1
# RFC 5425 section 4.1, RFC 5426 section 3.3.
DEFAULT_TLS_PORT = 6514
DEFAULT_UDP_PORT = 514
# RFC 5426 section 3.2: the largest IPv4 UDP payload.
UDP_MAX_MESSAGE = 65_507
UTF8_BOM = b"\xef\xbb\xbf"
# Seconds, at least, to wait after the handshake for a refusal.
PROBE_MIN = 0.1

# RFC 5424 section 6: header field limits, printable US-ASCII only.
_HEADER_LIMITS = {"HOSTNAME": 255, "APP-NAME": 48, "PROCID": 128, "MSGID": 32}
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_AUTHORITY = re.compile(r"(\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+))(:(?P<port>\d+))?")
_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) "
    rb"(?P<hostname>\S+) (?P<app_name>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
)


class Facility(IntEnum):
    """Syslog facilities used for audit (RFC 5424 table 1)."""

    AUTH = 4  # security/authorization messages
    AUTHPRIV = 10  # security/authorization messages (private)
    LOG_AUDIT = 13  # log audit


class Severity(IntEnum):
    """Syslog severities (RFC 5424 table 2)."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7


class Scheme(StrEnum):
    """How an audit repository is reached."""

    TLS = "tls"  # RFC 5425
    UDP = "udp"  # RFC 5426


DEFAULT_PRI = Facility.AUTHPRIV * 8 + Severity.NOTICE


@dataclass(frozen=True, slots=True)
class Repository:
    """An Audit Record Repository address, ``tls://host:port`` or ``udp://...``.

    Parameters
    ----------
    scheme : Scheme
        The transport.
    host : str
        Host name or IP address; an IPv6 address without brackets.
    port : int
        The port; 6514 for TLS and 514 for UDP when the URL has none.
    """

    scheme: Scheme
    host: str
    port: int

    @property
    def url(self) -> str:
        """The repository as written in the configuration."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Repository:
        """Read ``tls://host:port`` or ``udp://host:port``.

        Raises
        ------
        ValueError
            If the scheme is neither ``tls`` nor ``udp``, or the host or port
            is missing or malformed.
        """
        scheme_text, sep, rest = text.strip().partition("://")
        try:
            scheme = Scheme(scheme_text.lower())
        except ValueError as exc:
            raise ValueError(
                f"audit repository {text!r}: the scheme must be tls:// or udp://"
            ) from exc
        match = _AUTHORITY.fullmatch(rest)
        if not sep or match is None:
            raise ValueError(f"audit repository {text!r} is not scheme://host:port")
        default = DEFAULT_TLS_PORT if scheme is Scheme.TLS else DEFAULT_UDP_PORT
        port = int(match["port"] or default)
        if not 0 < port < 65536:
            raise ValueError(f"audit repository {text!r}: port out of range")

        return cls(scheme, match["v6"] or match["host"], port)


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """An RFC 5424 message read back by :func:`parse_message`."""

    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes

    @property
    def facility(self) -> int:
        """The facility, PRI divided by 8."""
        return self.pri // 8

    @property
    def severity(self) -> int:
        """The severity, PRI modulo 8."""
        return self.pri % 8


class Transport(Protocol):
    """Sends a batch of syslog messages to one repository, or raises OSError."""

    max_message_size: int | None

    def send(self, messages: Sequence[bytes]) -> None:
        """Send every message of the batch, in order."""


def syslog_message(
    xml: bytes,
    *,
    hostname: str | None = None,
    app_name: str = APP_NAME,
    procid: str | None = None,
    timestamp: datetime | None = None,
    facility: int = Facility.AUTHPRIV,
    severity: int = Severity.NOTICE,
) -> bytes:
    """Wrap an audit message in an RFC 5424 syslog message.

    Parameters
    ----------
    xml : bytes
        The DICOM audit message, UTF-8; a leading byte order mark is removed.
    hostname : str, optional
        HOSTNAME; this machine's name by default.
    app_name : str
        APP-NAME, ``SPIDERS`` by default.
    procid : str, optional
        PROCID; NILVALUE when omitted.
    timestamp : datetime, optional
        TIMESTAMP, timezone-aware; now, with the local offset, by default.
    facility : int
        A :class:`Facility`; AUTHPRIV (10) by default.
    severity : int
        A :class:`Severity`; NOTICE (5) by default.

    Returns
    -------
    bytes
        The SYSLOG-MSG, without transport framing.

    Raises
    ------
    ValueError
        If a header field is empty, too long or not printable US-ASCII, the
        timestamp is naive, or PRI would leave 0..191.
    """
    pri = int(facility) * 8 + int(severity)
    if not 0 <= pri <= 191 or not 0 <= int(severity) <= 7:
        raise ValueError(f"PRI {pri} is outside 0..191")
    moment = datetime.now().astimezone() if timestamp is None else timestamp
    if moment.utcoffset() is None:
        raise ValueError("the syslog TIMESTAMP needs a timezone-aware datetime")
    fields = {
        "HOSTNAME": hostname or socket.gethostname() or NILVALUE,
        "APP-NAME": app_name,
        "PROCID": procid or NILVALUE,
        "MSGID": MSGID,
    }
    for name, value in fields.items():
        _check_header_field(name, value)
    header = " ".join(
        [
            f"<{pri}>{VERSION}",
            _rfc3339(moment),
            *fields.values(),
            NILVALUE,
        ]
    )

    return header.encode("ascii") + b" " + xml.removeprefix(UTF8_BOM)


def frame(message: bytes) -> bytes:
    """Frame one message by octet counting (RFC 5425 section 4.3).

    MSG-LEN is the number of bytes of ``message``, written in decimal.
    """
    return str(len(message)).encode("ascii") + b" " + message


def read_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split an octet-counted stream into messages.

    Parameters
    ----------
    buffer : bytes
        What was received so far.

    Returns
    -------
    tuple of (list of bytes, bytes)
        The complete messages and the bytes of an incomplete last frame.

    Raises
    ------
    ValueError
        If a frame does not start with MSG-LEN and one space.
    """
    messages: list[bytes] = []
    rest = buffer
    while rest:
        match = re.match(rb"([1-9]\d{0,8}) ", rest)
        if match is None:
            if len(rest) <= 10 and rest.isdigit():
                break
            raise ValueError(f"not an octet-counting frame: {rest[:20]!r}")
        start, length = match.end(), int(match[1])
        if len(rest) < start + length:
            break
        messages.append(rest[start : start + length])
        rest = rest[start + length :]

    return messages, rest


def parse_message(data: bytes) -> SyslogMessage:
    """Read an RFC 5424 message back into its fields.

    Raises
    ------
    ValueError
        If the header does not follow RFC 5424.
    """
    match = _HEADER.match(data)
    if match is None:
        raise ValueError(f"not an RFC 5424 message: {data[:60]!r}")
    rest = data[match.end() :]
    structured_data, msg = _split_structured_data(rest)

    return SyslogMessage(
        pri=int(match["pri"]),
        version=int(match["version"]),
        timestamp=match["timestamp"].decode("ascii"),
        hostname=match["hostname"].decode("ascii"),
        app_name=match["app_name"].decode("ascii"),
        procid=match["procid"].decode("ascii"),
        msgid=match["msgid"].decode("ascii"),
        structured_data=structured_data,
        msg=msg,
    )


class TlsTransport:
    """Sends batches over one mutually authenticated TLS connection each.

    Parameters
    ----------
    host, port : str, int
        The repository.
    context : ssl.SSLContext
        A client context presenting our certificate and verifying the
        repository's (:func:`ihe.tls.client_context`).
    timeout : float
        Seconds allowed for connecting, each write and the closing.
    """

    max_message_size: int | None = None

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0
    ) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.timeout = timeout

    def send(self, messages: Sequence[bytes]) -> None:
        """Send the batch, then see the repository close the session.

        Raises
        ------
        OSError
            Connection refused or lost, TLS handshake failed
            (``ssl.SSLError``), or the repository did not close its side in
            time (``TimeoutError``): the batch must be sent again.
        """
        raw = socket.create_connection((self.host, self.port), self.timeout)
        started = time.monotonic()
        try:
            tls = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        with tls:
            # A repository refusing our certificate after the handshake just
            # closes the connection; give its verdict time to arrive.
            handshake = time.monotonic() - started
            probe = min(max(PROBE_MIN, 2 * handshake), self.timeout)
            if _closed_within(tls, probe):
                raise ConnectionRefusedError(
                    "the audit repository closed the TLS session after the "
                    "handshake; it may refuse our client certificate"
                )
            tls.sendall(b"".join(frame(message) for message in messages))
            _close_and_wait(tls)


class UdpTransport:
    """Sends each message as one UDP datagram (RFC 5426).

    Parameters
    ----------
    host, port : str, int
        The repository.
    """

    max_message_size: int | None = UDP_MAX_MESSAGE

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def send(self, messages: Sequence[bytes]) -> None:
        """Send the batch; a refusal noticed on the way raises OSError."""
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # A connected socket reports an ICMP "port unreachable" on the
            # next datagram, the only sign UDP gives of a repository down.
            sock.connect(address)
            for message in messages:
                sock.send(message)


def _closed_within(tls: ssl.SSLSocket, timeout: float) -> bool:
    # A syslog receiver never writes application data: what arrives is either
    # TLS 1.3 post-handshake messages (session tickets), or the end.
    deadline = time.monotonic() + timeout
    previous = tls.gettimeout()
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([tls], [], [], remaining)
            if not readable:
                return False
            tls.setblocking(False)
            try:
                if not tls.recv(1):
                    return True
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return True
        return False
    finally:
        tls.settimeout(previous)


def _close_and_wait(tls: ssl.SSLSocket) -> None:
    # Our close_notify ends the stream; the repository's close (its own
    # close_notify or a plain end of TCP stream) shows it read everything.
    try:
        raw = tls.unwrap()
    except ssl.SSLEOFError:
        return
    except ssl.SSLZeroReturnError:
        return
    while raw.recv(4096):
        pass


def _split_structured_data(rest: bytes) -> tuple[str, bytes]:
    if rest.startswith(NILVALUE.encode()):
        sd, msg = NILVALUE, rest[1:]
    else:
        end = _structured_data_end(rest)
        sd, msg = rest[:end].decode("utf-8"), rest[end:]
    if msg and not msg.startswith(b" "):
        raise ValueError("STRUCTURED-DATA not followed by a space")

    return sd, msg[1:]


def _structured_data_end(rest: bytes) -> int:
    # SD-ELEMENTs follow each other, each [ ... ]; quoted values may hold
    # escaped quotes and brackets.
    index, quoted, escaped = 0, False, False
    if not rest.startswith(b"["):
        raise ValueError("STRUCTURED-DATA is neither '-' nor an SD-ELEMENT")
    while index < len(rest):
        char = rest[index : index + 1]
        if escaped:
            escaped = False
        elif char == b"\\":
            escaped = True
        elif char == b'"':
            quoted = not quoted
        elif char == b"]" and not quoted and rest[index + 1 : index + 2] != b"[":
            return index + 1
        index += 1
    raise ValueError("unterminated STRUCTURED-DATA")


def _check_header_field(name: str, value: str) -> None:
    if not _PRINTABLE.match(value) or len(value) > _HEADER_LIMITS[name]:
        raise ValueError(
            f"syslog {name} must be 1-{_HEADER_LIMITS[name]} printable US-ASCII "
            f"characters, not {value!r}"
        )


def _rfc3339(moment: datetime) -> str:
    text = moment.isoformat(timespec="milliseconds")

    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
