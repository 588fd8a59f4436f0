"""What a transaction's message handler receives and returns.

The receiver (:mod:`ihe.hl7v2.receiver`) stores each message, then calls the
handler registered for its type and event inside one database transaction.
A handler maps the message, changes the records it owns and returns an
:class:`Outcome`; it raises an exception of the error tree to refuse the
message, and the acknowledgement builder turns that exception into ``AE`` or
``AR`` with its ERR segment. The handler never builds an acknowledgement.

Limitations
-----------
A handler sees one message at a time and cannot answer with anything but the
general acknowledgement (no ``ORR``, ``ORL`` or ``SRR`` responses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ihe.hl7v2.er7 import Message
from server.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where a message came from.

    Attributes
    ----------
    settings : Settings
        The configuration of this process.
    sender : str
        ``MSH-3|MSH-4`` as received: the sending application and facility.
    peer : str
        The network address the message arrived from (host only).
    """

    settings: Settings
    sender: str
    peer: str


@dataclass(frozen=True)
class Outcome:
    """What a handler did, for the message store and the log.

    Attributes
    ----------
    detail : str
        One line naming what changed by internal ids only (never patient
        data): ``registration 5f0c... created``.
    dispatch : bool
        True when work is waiting for the task queue (a new or rescheduled
        registration): the receiver dispatches it once the ACK is sent.
    """

    detail: str
    dispatch: bool = False


Handler = Callable[[Session, Message, Context], Outcome]
