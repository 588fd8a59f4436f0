"""Transfer syntaxes on the way out: what the cache proposes, and what it sends.

The cache keeps every instance in the transfer syntax its site sent (JPEG, JPEG-LS,
JPEG 2000, RLE...). A console may accept only some of them. When the cache sends
instances (C-STORE sub-operations of a C-MOVE or a C-GET, PS3.4 C.4.2 and C.4.3),
it follows three rules:

1. Propose, for each SOP class of the batch, one presentation context per transfer
   syntax the instances are stored in, and a separate context offering the
   uncompressed syntaxes (Explicit VR Little Endian, then Implicit VR Little
   Endian). A console that refuses a compressed syntax refuses only that context
   (PS3.8 9.3.3.2, result 4, "transfer syntaxes not supported").
2. Send each instance on a context of its own transfer syntax when one is accepted.
   Otherwise, when only uncompressed is accepted, decode the pixel data (pydicom's
   decoders with the pylibjpeg plugins) and send it uncompressed. Lossless syntaxes
   give back the very pixels that were encoded; lossy ones keep Lossy Image
   Compression (0028,2110) at ``01`` so the console still knows. The SOP Instance
   UID is kept: only the encoding changes, as PS3.5 10 allows on the network.
3. When neither works (no decoder for the syntax, no context for the SOP class),
   that instance fails with an error naming its transfer syntax, and the others go
   on. Compressed bytes never go out on an uncompressed context.

The archive's files are never rewritten: decoding happens on the copy read for
sending.

Limitations
-----------
Explicit VR Big Endian instances are sent only to consoles that accept big endian;
converting them to little endian is not done, so such an instance fails when the
console accepts only little endian. At most 128 presentation contexts fit in one
association request (PS3.8 9.3.2.2): the uncompressed context of each SOP class
comes first, then the instances' own syntaxes, most frequent first; an instance
whose own syntax did not fit is sent decoded. Pixel data is decoded whole in
memory; multi-gigabyte multi-frame instances need as much memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

logger = logging.getLogger(__name__)

LOG_NOT_SENT = "instance not sent: no accepted presentation context"
LOG_DECODED = "instance decoded to send it uncompressed"

# PS3.8 9.3.2.2: presentation context ids are odd numbers from 1 to 255.
MAX_CONTEXTS: Final = 128
UNCOMPRESSED: Final[tuple[UID, UID]] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
SOP_INSTANCE_UID: Final = 0x00080018

# Transfer syntaxes whose encoding discards information (PS3.5 Annex A.4), and the
# Lossy Image Compression Method (0028,2114) defined term of each (PS3.3 C.7.6.1.1.5).
ALWAYS_LOSSY: Final[dict[str, str]] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS Lossy (Near-Lossless)
}
# Syntaxes that may carry lossy or lossless data: without a statement in the
# instance, the decoded copy is marked lossy, never lossless.
MAYBE_LOSSY: Final[dict[str, str]] = {
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000
}


@dataclass(frozen=True)
class Outgoing:
    """One instance as it will be handed to pynetdicom's C-STORE.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        What to hand over; for a failed instance, :func:`not_sent`'s stub.
    context_id : int or None
        The accepted presentation context the instance goes out on.
    transfer_syntax : str or None
        The transfer syntax it goes out in.
    decoded : bool
        Whether the pixel data was decoded to send it uncompressed.
    error : str or None
        Why the instance cannot be sent; ``None`` when it can.
    """

    dataset: Dataset
    context_id: int | None
    transfer_syntax: str | None
    decoded: bool = False
    error: str | None = None


class DestinationWatch:
    """Catches the association pynetdicom opens to a C-MOVE destination.

    pynetdicom opens the association itself after the C-MOVE handler names the
    destination; bound to that association through :attr:`handlers`, this object
    keeps it so that the handler can see which contexts the destination accepted.
    """

    def __init__(self) -> None:
        self.assoc: Association | None = None

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        """The (event, handler) pairs to bind on the destination association."""
        return [(evt.EVT_ESTABLISHED, self.handle_established)]

    def handle_established(self, event: Event) -> None:
        """Keep the established association."""
        self.assoc = event.assoc

    def accepted(self) -> list[PresentationContext]:
        """The destination's accepted contexts; none before it is established."""
        return [] if self.assoc is None else list(self.assoc.accepted_contexts)


def propose_contexts(instances: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """The presentation contexts to request for sending a batch of instances.

    Parameters
    ----------
    instances : iterable of (str, str)
        ``(SOP Class UID, Transfer Syntax UID)`` of each instance of the batch.

    Returns
    -------
    list of pynetdicom.presentation.PresentationContext
        At most :data:`MAX_CONTEXTS`, grouped by SOP class in the batch's order:
        the instances' own non-uncompressed syntaxes first, one context each, then
        the uncompressed context. pynetdicom numbers them 1, 3, 5... in this order.
    """
    counts = Counter(
        (str(sop), str(ts) or ExplicitVRLittleEndian) for sop, ts in instances
    )
    sop_counts: Counter[str] = Counter()
    for (sop, _), count in counts.items():
        sop_counts[sop] += count
    sop_order = list(dict.fromkeys(sop for sop, _ in counts))

    # The uncompressed context of every SOP class first: any instance can then go
    # out, decoded if need be; the own syntaxes fill what room is left.
    chosen: set[tuple[str, str | None]] = set()
    for sop, _ in sop_counts.most_common(MAX_CONTEXTS):
        chosen.add((sop, None))
    own = [(key, n) for key, n in counts.most_common() if key[1] not in UNCOMPRESSED]
    for (sop, ts), _ in own:
        if len(chosen) >= MAX_CONTEXTS:
            break
        if (sop, None) in chosen:
            chosen.add((sop, ts))

    contexts = []
    for sop in sop_order:
        for key_sop, ts in counts:
            if key_sop == sop and (sop, ts) in chosen:
                contexts.append(build_context(sop, [ts]))
        if (sop, None) in chosen:
            contexts.append(build_context(sop, list(UNCOMPRESSED)))

    return contexts


def destination_with_contexts(
    destination: tuple[Any, ...],
    contexts: list[PresentationContext],
    watch: DestinationWatch,
) -> tuple[Any, ...]:
    """A C-MOVE destination ``(host, port, kwargs)`` proposing `contexts`.

    The keyword arguments the destination already had (TLS...) are kept; the
    watch's handlers are added to any already bound.
    """
    host, port = destination[0], destination[1]
    kwargs: dict[str, Any] = dict(destination[2] or {}) if len(destination) > 2 else {}
    if contexts:
        kwargs["contexts"] = contexts
    kwargs["evt_handlers"] = [*kwargs.get("evt_handlers", []), *watch.handlers]

    return host, port, kwargs


def can_decode(transfer_syntax: str) -> bool:
    """Whether an installed plugin decodes pixel data in `transfer_syntax`."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


def prepare(ds: Dataset, accepted: Sequence[PresentationContext]) -> Outgoing:
    """Choose the context `ds` goes out on, decoding its pixel data if need be.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance as read from the archive, with its File Meta Information;
        it is changed in place when decoded (the file is not).
    accepted : sequence of pynetdicom.presentation.PresentationContext
        The contexts the peer accepted on the association the instance goes out
        on.

    Returns
    -------
    Outgoing
        The dataset to hand to pynetdicom and the context it goes out on, or the
        error that keeps it from going out.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    own = UID(str(ds.file_meta.get("TransferSyntaxUID", "")) or ExplicitVRLittleEndian)
    usable = [cx for cx in accepted if cx.abstract_syntax == sop_class and cx.as_scu]

    # The instance's own transfer syntax, or one pynetdicom re-encodes it into
    # without touching the pixel data (implicit and explicit VR, deflate).
    cx = _context_for(usable, own)
    if cx is not None and _encapsulated_on_native(ds, cx):
        return _failed(ds, own, "its pixel data is encapsulated (compressed)")
    if cx is not None:
        return Outgoing(ds, cx.context_id, str(cx.transfer_syntax[0]))

    # Uncompressed only: decode, if a decoder is installed.
    native = _context_for(usable, ExplicitVRLittleEndian)
    if native is None:
        return _failed(ds, own, "the peer accepts no context for its SOP class")
    if not own.is_compressed:
        return _failed(ds, own, "the peer accepts no context for its byte order")
    if not can_decode(own):
        return _failed(ds, own, "no decoder is installed to send it uncompressed")
    try:
        _decode(ds, own)
    except (RuntimeError, ValueError, AttributeError, NotImplementedError) as exc:
        return _failed(ds, own, f"its pixel data cannot be decoded ({exc})")
    logger.debug(LOG_DECODED, extra={"transfer_syntax": str(own)})

    return Outgoing(ds, native.context_id, str(native.transfer_syntax[0]), True)


def not_sent(sop_instance_uid: str) -> Dataset:
    """What to hand pynetdicom for an instance that must not go out.

    A dataset with only the SOP Instance UID: pynetdicom's C-STORE refuses it for
    its missing SOP Class UID before a byte is sent, and the C-MOVE or C-GET
    counts a failed sub-operation with this UID in the Failed SOP Instance UID
    List (0008,0058), then goes on with the next instance. A failure status from
    the handler would instead end the whole retrieve.
    """
    stub = Dataset()
    # Not validated: an over-long UID is reported as it came (see ae.py).
    stub.add(
        DataElement(SOP_INSTANCE_UID, "UI", sop_instance_uid, validation_mode=IGNORE)
    )

    return stub


def _context_for(
    usable: Sequence[PresentationContext], syntax: UID
) -> PresentationContext | None:
    """The context pynetdicom's C-STORE picks for `syntax`, as it picks it.

    An exact match first; else the first context whose syntax pynetdicom converts
    `syntax` into (both uncompressed and of the same byte order).
    """
    convertible = None
    for cx in usable:
        cx_syntax = UID(str(cx.transfer_syntax[0]))
        if cx_syntax == syntax:
            return cx
        if (
            convertible is None
            and not syntax.is_compressed
            and not cx_syntax.is_compressed
            and syntax.is_little_endian == cx_syntax.is_little_endian
        ):
            convertible = cx

    return convertible


def _encapsulated_on_native(ds: Dataset, cx: PresentationContext) -> bool:
    """Encapsulated pixel data about to go out in a native syntax (a mislabelled
    file): never sent, since the peer would read compressed bytes as pixels."""
    if "PixelData" not in ds or UID(str(cx.transfer_syntax[0])).is_compressed:
        return False

    return bool(ds["PixelData"].is_undefined_length)


def _decode(ds: Dataset, syntax: UID) -> None:
    """Decode `ds`'s pixel data in place, keeping its identity and lossy history."""
    lossy_method = ALWAYS_LOSSY.get(str(syntax)) or MAYBE_LOSSY.get(str(syntax))
    declared = str(ds.get("LossyImageCompression", "")).strip()
    ds.decompress(generate_instance_uid=False)
    if lossy_method is None:
        return
    if str(syntax) in ALWAYS_LOSSY or declared != "00":
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = lossy_method


def _failed(ds: Dataset, syntax: UID, reason: str) -> Outgoing:
    sop_instance = _raw_uid(ds, SOP_INSTANCE_UID)
    error = (
        f"transfer syntax {syntax} ({syntax.name}): "
        f"no accepted presentation context; {reason}"
    )
    logger.warning(
        LOG_NOT_SENT,
        extra={
            "sop_class_uid": str(ds.get("SOPClassUID", "")),
            "sop_instance_uid": sop_instance,
            "transfer_syntax": str(syntax),
            "error": error,
        },
    )

    return Outgoing(not_sent(sop_instance), None, None, error=error)


def _raw_uid(ds: Dataset, tag: int) -> str:
    """A UID as stored, read without pydicom's length check (over-long UIDs
    arrive from the field and must be reported as they are)."""
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    value = elem.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

    return text.rstrip("\x00 ")
