"""The association of a Query/Retrieve client (SCU side) with a site.

The C-FIND client (:mod:`ihe.qr.rad14_query_images`) and the retrieve clients
(:mod:`ihe.qr.rad16_retrieve_images` over C-MOVE,
:mod:`ihe.qr.rad16_retrieve_images_cget` over C-GET) reach a site alike
(PS3.8 7.1.1, A-ASSOCIATE): our AE title as calling AE title, the site's as
called AE title, the site's time-out for the association set-up and the
network, TLS when the site takes it. The DIMSE time-out is the same time-out
for a query; a retrieve passes its own, since a site may take minutes between
two responses while it sends. :func:`associate` opens the association;
:func:`released` releases it when the caller is done, if it still stands.

What a failed association means is left to the caller: the C-FIND client
raises :class:`~server.errors.AssociationFailed`, the retrieve clients answer
an ``association_aborted`` outcome, both with :func:`refused_text`.

Limitations
-----------
A rejection by the site (A-ASSOCIATE-RJ) is not told apart from a site that
does not answer: both are a refused association.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pynetdicom import pdu_primitives
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType

from ihe.dicom.ae import make_ae

# A presentation context to request: abstract syntax and transfer syntaxes
# (None: pynetdicom's default uncompressed ones).
Context = tuple[str, Sequence[str] | None]


def associate(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    contexts: Sequence[Context],
    timeout: float,
    tls: ssl.SSLContext | None,
    dimse_timeout: float | None = None,
    ext_neg: list[pdu_primitives._UI] | None = None,
    evt_handlers: list[EventHandlerType] | None = None,
) -> Association:
    """Request an association with the site; the caller checks it is established.

    Parameters
    ----------
    contexts : sequence of Context
        The presentation contexts to propose, in order.
    timeout : float
        ACSE and network time-out, in seconds.
    dimse_timeout : float, optional
        DIMSE time-out, in seconds; `timeout` when not given.
    ext_neg, evt_handlers : list, optional
        User information items and event handlers, as pynetdicom takes them.
    """
    ae = make_ae(calling_ae)
    ae.acse_timeout = ae.network_timeout = timeout
    ae.dimse_timeout = timeout if dimse_timeout is None else dimse_timeout
    for abstract_syntax, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(abstract_syntax)
        else:
            ae.add_requested_context(abstract_syntax, list(syntaxes))
    return ae.associate(
        host,
        port,
        ae_title=ae_title,
        ext_neg=ext_neg,
        evt_handlers=evt_handlers,
        tls_args=(tls, host) if tls is not None else None,
    )


@contextmanager
def released(assoc: Association) -> Iterator[Association]:
    """Use `assoc`, then release it if it is still established."""
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def refused_text(ae_title: str) -> str:
    """What is said of an association the site did not accept."""
    return f"no association with {ae_title}: refused, unreachable or timed out"
