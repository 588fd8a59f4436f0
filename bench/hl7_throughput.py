"""HL7 v2 intake throughput: SIU^S12 over MLLP, acknowledged, versus bare parsing.

Starts the MLLP listener of SPIDERS on loopback over a real message store
(SQLite in a temporary directory, as the embedded default), feeds the patient
index with the patients the messages name, then sends N ``SIU^S12`` messages,
each a new registration, first over one connection and then spread over four.
Every sender waits for each ACK before sending its next message, as MLLP
senders do. It reports messages acknowledged per second beside the rate at
which hl7apy alone parses the same messages (no network, no storage) and the
rate of SPIDERS' own ER7 codec, all measured in this run.

The task queue is not involved: discovery is left pending, as it would be
between two dispatches.

Usage::

    .venv/bin/python bench/hl7_throughput.py [-n 1000] [--patients 50]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from hl7apy.parser import parse_message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ihe.hl7v2 import er7, mllp
from ihe.hl7v2.listener import MllpListener
from ihe.hl7v2.receiver import Receiver
from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.config import load_settings
from server.runtime import Runtime

DOMAIN = "2.999.77.1"


def siu_s12(run: str, n: int, patients: int) -> str:
    """The n-th SIU^S12 of a run: a new appointment for one of the patients."""
    day = 1 + n % 28
    segments = [
        "MSH|^~\\&|RDV_APP|CHU_BENCH|SPIDERS|SPIDERS|20250317081500||SIU^S12^SIU_S12|"
        f"{run}-{n}|P|2.5|||||FRA|UNICODE UTF-8",
        f"SCH|{run}-RDV{n}^RDV_APP|{run}-RDV{n}^RDV_APP|||||RCP^RCP^L||60|min|"
        f"^^60^202505{day:02d}143000^202505{day:02d}153000||||||||||||||Booked",
        f"PID|1||P{n % patients}^^^CHU_BENCH&{DOMAIN}&ISO^PI||LÉVÊQUE^Noël^^^M^^L||"
        "19700101|M",
        "RGS|1|A",
        f"AIS|1|A|RCP-ONCO^RCP oncologie^L|202505{day:02d}143000|||60|min",
        "AIL|1|A|RCP-ONCO^^^CHU_BENCH",
    ]
    return "\r".join(segments) + "\r"


def feed_patients(rt: Runtime, count: int) -> None:
    """The patients the messages name, fed directly to the index."""
    with rt.db.session() as session:
        for n in range(count):
            record = PatientRecord(identifiers=(Identifier(DOMAIN, f"P{n}"),))
            patient_index.feed(session, record, {})


def send_all(port: int, payloads: list[bytes]) -> None:
    """Send each message and wait for its ACK, on one connection."""
    decoder = mllp.FrameDecoder(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for payload in payloads:
            sock.sendall(mllp.frame(payload))
            frames: list[bytes | mllp.Oversized] = []
            while not frames:
                frames = decoder.feed(sock.recv(65536))
            frame = frames[0]
            assert isinstance(frame, bytes) and b"MSA|AA|" in frame, frame


def acknowledged_rate(port: int, messages: list[str], connections: int) -> float:
    """Messages acknowledged per second, `connections` senders at once."""
    payloads = [m.encode("utf-8") for m in messages]
    shares = [payloads[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=send_all, args=(port, s)) for s in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(payloads) / (time.perf_counter() - started)


def parse_rate(messages: list[str], parse: object) -> float:
    """Messages parsed per second by `parse` (text in, anything out)."""
    assert callable(parse)
    started = time.perf_counter()
    for text in messages:
        parse(text)
    return len(messages) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="messages per run")
    parser.add_argument("--patients", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spiders-bench-") as tmp:
        rt = Runtime(load_settings({"SPIDERS_DATA_DIR": tmp}))
        feed_patients(rt, args.patients)
        listener = MllpListener(
            Receiver(rt.db, rt.settings), "127.0.0.1", 0, max_frame=1 << 20
        )
        listener.start()
        port = listener.address[1]
        try:
            rows = []
            for connections in (1, 4):
                run = f"C{connections}"
                batch = [siu_s12(run, n, args.patients) for n in range(args.n)]
                rate = acknowledged_rate(port, batch, connections)
                rows.append((f"MLLP, {connections} connection(s), AA", rate))
        finally:
            listener.stop()
            rt.db.dispose()
    sample = [siu_s12("P", n, args.patients) for n in range(args.n)]
    rows.append(
        ("hl7apy parse_message only", parse_rate(sample, _hl7apy_parse)),
    )
    rows.append(("SPIDERS er7 parse, every field", parse_rate(sample, _er7_parse)))
    print(f"{args.n} SIU^S12 per run, SQLite store, {args.patients} patients")
    for label, rate in rows:
        print(f"  {label:<34} {rate:10.0f} messages/s")
    return 0


def _hl7apy_parse(text: str) -> object:
    return parse_message(text, find_groups=False)


def _er7_parse(text: str) -> object:
    # er7 splits fields on first use: read them all, as hl7apy does.
    msg = er7.parse(text)
    return [seg.field(n) for seg in msg.segments for n in range(1, seg.size + 1)]


if __name__ == "__main__":
    sys.exit(main())
