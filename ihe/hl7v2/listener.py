"""The MLLP listener: TCP (optionally TLS) connections carrying HL7 v2 frames.

Each accepted connection gets its own thread, which reads the stream, cuts it
into frames (:class:`~ihe.hl7v2.mllp.FrameDecoder`) and hands the frames, one
at a time and in order, to the frame handler; each answer is written back
before the next frame of that connection is handled. Connections stay open
until the peer closes them: senders usually keep one open and stream. A frame
whose end block ``0x1C`` comes without its ``0x0D`` is answered after a short
grace (:data:`~ihe.hl7v2.mllp.END_GRACE`) and logged at WARNING, rather than
left waiting for the sender's timeout.

With a TLS context the handshake happens in the connection's thread; a client
CA in the context makes client certificates mandatory (mutual TLS, as an ATNA
secure node requires). A failed handshake is logged and the connection
closed.

At most ``max_connections`` connections are served at once: one more is
closed as soon as it is accepted, with a WARNING, so a sender that opens
connections without end cannot exhaust the server's threads. A connection on
which nothing arrives for ``idle_seconds``, or whose frame is not complete
``idle_seconds`` after it started, is closed (a partial frame on it is
dropped, with a WARNING); senders reconnect when they next have a message,
as interface engines do.

Limitations
-----------
MLLP carries no identity of its own: without a client CA, any host that
reaches the port may send messages, which is why the default address is
loopback. One thread per connection. A failed TLS handshake is logged and
reported to ``on_tls_failure`` (``spiders serve`` audits it as 110113).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ihe.hl7v2.mllp import END_GRACE, FrameDecoder, Oversized, frame

logger = logging.getLogger(__name__)

LOG_STARTED = "MLLP listener started"
LOG_STOPPED = "MLLP listener stopped"
LOG_CONNECTED = "MLLP connection opened"
LOG_DISCONNECTED = "MLLP connection closed"
LOG_PARTIAL_DROPPED = "partial MLLP frame dropped at close"
LOG_OUTSIDE_FRAMES = "bytes outside MLLP frames discarded"
LOG_UNTERMINATED = "MLLP frame ended without 0x0D after 0x1C; taken as complete"
LOG_TLS_FAILED = "TLS handshake failed"
LOG_TOO_MANY = "MLLP connection refused: too many open"
LOG_IDLE = "idle MLLP connection closed"
LOG_SLOW_FRAME = "MLLP frame not completed in time; connection closed"
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_SECONDS = 3600.0
READ_SIZE = 65536
BACKLOG = 64
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    """What to do with a frame's answer.

    Attributes
    ----------
    ack : bytes or None
        The answer's payload, framed on sending; None to send nothing.
    after : callable, optional
        Run once the answer is sent (for example, dispatching the work the
        message created).
    """

    ack: bytes | None
    after: Callable[[], object] | None = None


class FrameHandler(Protocol):
    """What the listener hands frames to; it must always return a reply."""

    def handle(self, payload: bytes, peer: str) -> Reply:
        """Answer one complete frame."""

    def handle_oversized(self, head: bytes, size: int, peer: str) -> Reply:
        """Answer a frame longer than the limit, of which only `head` was kept."""


class MllpListener:
    """Accept MLLP connections on `host`:`port` and serve each in a thread.

    Parameters
    ----------
    handler : FrameHandler
        Answers each frame.
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`address`).
    max_frame : int
        Largest frame payload accepted, in bytes.
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context; plain TCP when omitted.
    on_tls_failure : callable, optional
        Told ``(peer, reason)`` of each failed TLS handshake, for auditing.
    """

    def __init__(
        self,
        handler: FrameHandler,
        host: str,
        port: int,
        *,
        max_frame: int,
        ssl_context: ssl.SSLContext | None = None,
        on_tls_failure: Callable[[str, str], None] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self.on_tls_failure = on_tls_failure
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}

    @property
    def address(self) -> tuple[str, int]:
        """The bound address; the real port once started."""
        if self._sock is None:
            return self.host, self.port
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind, listen and start accepting in a background thread."""
        sock = socket.create_server((self.host, self.port), backlog=BACKLOG)
        self._sock = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="mllp-accept", daemon=True
        )
        self._accept_thread.start()
        logger.info(
            LOG_STARTED,
            extra={"port": self.address[1], "tls": self.ssl_context is not None},
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and wait for their threads."""
        self._stopping.set()
        if self._sock is not None:
            _shutdown(self._sock)
            self._sock.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            connections = dict(self._connections)
        for conn in connections:
            _shutdown(conn)
        for thread in connections.values():
            thread.join(timeout)
        logger.info(LOG_STOPPED)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                logger.warning("MLLP accept failed; listening on", exc_info=True)
                continue
            peer = f"{addr[0]}:{addr[1]}"
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(conn, peer), name=f"mllp-{peer}", daemon=True
            )
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    self._connections[conn] = thread
            if full:
                logger.warning(
                    LOG_TOO_MANY, extra={"peer": peer, "open": self.max_connections}
                )
                _shutdown(conn)
                conn.close()
                continue
            thread.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        stream: socket.socket | None = None
        try:
            stream = self._secure(conn, peer)
            if stream is not None:
                logger.info(LOG_CONNECTED, extra={"peer": peer})
                self._read_frames(stream, peer)
        finally:
            with self._lock:
                self._connections.pop(conn, None)
                if stream is not None:
                    self._connections.pop(stream, None)
            if stream is not None:
                stream.close()
            conn.close()

    def _secure(self, conn: socket.socket, peer: str) -> socket.socket | None:
        if self.ssl_context is None:
            return conn
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            tls = self.ssl_context.wrap_socket(conn, server_side=True)
            tls.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            logger.warning(
                LOG_TLS_FAILED, extra={"peer": peer, "reason": type(exc).__name__}
            )
            if self.on_tls_failure is not None:
                try:
                    self.on_tls_failure(peer, type(exc).__name__)
                except Exception:
                    logger.exception("reporting a failed TLS handshake failed")
            return None
        with self._lock:
            thread = self._connections.pop(conn, None)
            if thread is not None:
                self._connections[tls] = thread
        return tls

    def _read_frames(self, stream: socket.socket, peer: str) -> None:
        decoder = FrameDecoder(self.max_frame)
        frame_started: float | None = None
        while True:
            if not decoder.pending:
                frame_started = None
            elif frame_started is None:
                frame_started = time.monotonic()
            elif time.monotonic() - frame_started > self.idle_seconds:
                # A sender trickling a frame must finish it in that time too.
                logger.warning(LOG_SLOW_FRAME, extra={"peer": peer})
                break
            # After a final 0x1C, the 0x0D gets a short grace (see mllp).
            awaiting_end = decoder.awaiting_end
            stream.settimeout(END_GRACE if awaiting_end else self.idle_seconds)
            try:
                data = stream.recv(READ_SIZE)
            except TimeoutError:
                if not awaiting_end:
                    logger.info(LOG_IDLE, extra={"peer": peer})
                    break
                items = decoder.flush()
            except OSError:
                break
            else:
                if not data:
                    break
                items = decoder.feed(data)
            if not self._answer_all(stream, peer, decoder, items):
                return
        if decoder.pending:
            logger.warning(
                LOG_PARTIAL_DROPPED, extra={"peer": peer, "bytes": decoder.pending}
            )
        if decoder.discarded:
            logger.warning(
                LOG_OUTSIDE_FRAMES, extra={"peer": peer, "bytes": decoder.discarded}
            )
        logger.info(LOG_DISCONNECTED, extra={"peer": peer})

    def _answer_all(
        self,
        stream: socket.socket,
        peer: str,
        decoder: FrameDecoder,
        items: list[bytes | Oversized],
    ) -> bool:
        """Answer each frame in order; False when the peer is gone."""
        if decoder.unterminated:
            logger.warning(
                LOG_UNTERMINATED, extra={"peer": peer, "frames": decoder.unterminated}
            )
            decoder.unterminated = 0
        return all(self._answer(stream, peer, item) for item in items)

    def _answer(
        self, stream: socket.socket, peer: str, item: bytes | Oversized
    ) -> bool:
        """Handle one frame and send its answer; False when the peer is gone."""
        try:
            if isinstance(item, Oversized):
                reply = self.handler.handle_oversized(item.head, item.size, peer)
            else:
                reply = self.handler.handle(item, peer)
        except Exception as exc:
            # The handler answers every input itself; this is our own bug. The
            # traceback may quote message content: DEBUG only.
            logger.error(
                "frame handler failed",
                extra={"peer": peer, "error": type(exc).__name__},
            )
            logger.debug("frame handler failed", exc_info=exc)
            return True
        if reply.ack is not None:
            try:
                stream.sendall(frame(reply.ack))
            except OSError:
                logger.warning("peer gone before the answer", extra={"peer": peer})
                return False
        if reply.after is not None:
            try:
                reply.after()
            except Exception:
                logger.exception("work after the answer failed", extra={"peer": peer})
        return True


def _shutdown(sock: socket.socket) -> None:
    # Already closed by the peer is as good as shut down.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
