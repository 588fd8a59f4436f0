"""SPIDERS' PIX Consumer against a real PIX Manager: a second ``spiders serve``
acting as the region's MPI, asked by ITI-9 over MLLP and ITI-83 over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from ihe.pix import iti9_pix_consumer as iti9
from ihe.pix import iti83_pixm_consumer as iti83
from ihe.pix import patient_index
from ihe.pix.iti9_pix_consumer import CrossReference
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.config import Directory, Settings, Site, load_settings
from server.demo.run import Server, server_env
from server.errors import PeerError
from server.runtime import Runtime
from server.workflow import pix_source
from server.workflow.pix_source import LINKED_DETAIL, PixSource
from tests.flow_support import assert_all_audit_valid
from tests.peers import free_port

A, B, C = "2.999.74.1", "2.999.74.2", "2.999.74.3"
TIMEOUT = 5.0


@dataclass
class Mpi:
    """The MPI's server and how the consumer reaches it."""

    server: Server
    mllp_port: int
    data_dir: Path

    @property
    def fhir(self) -> str:
        return f"{self.server.base}/fhir"

    @property
    def auth(self) -> str:
        return f"Bearer {self.server.token}"


def start_mpi(root: Path) -> Mpi:
    """``spiders serve`` with one patient known in domains A and B, one in C."""
    sites = root / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [], "consoles": []}), encoding="utf-8")
    http_port, mllp_port = free_port(), free_port()
    env = server_env(
        load_settings({}), root / "data", sites, http_port, free_port(), mllp_port
    )
    server = Server(env, http_port, root / "mpi.log")
    try:
        server.wait_ready()
        for idents in (((A, "A-500"), (B, "B-500")), ((C, "C-900"),)):
            status, _ = server.request(
                "POST",
                "/fhir/Patient",
                {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": f"urn:oid:{s}", "value": v} for s, v in idents
                    ],
                    "name": [{"family": "Synthétique", "given": ["Zoé"]}],
                    "gender": "female",
                    "birthDate": "1961-07-02",
                },
            )
            assert status == 201
    except BaseException:
        server.stop()
        raise
    return Mpi(server, mllp_port, root / "data")


@pytest.fixture(scope="module")
def mpi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mpi]:
    running = start_mpi(tmp_path_factory.mktemp("mpi"))
    yield running
    assert running.server.stop() == 0


def mllp_peer(mpi: Mpi) -> iti9.MllpPeer:
    return iti9.MllpPeer("127.0.0.1", mpi.mllp_port, TIMEOUT)


def pixm_peer(mpi: Mpi) -> iti83.PixmPeer:
    return iti83.PixmPeer(mpi.fhir, TIMEOUT, auth_header=mpi.auth)


def test_iti9_consumer_gets_the_other_identifier_from_spiders_mpi(mpi: Mpi) -> None:
    query = iti9.build_query(Identifier(A, "A-500"), (B, C))
    answer = iti9.ask(mllp_peer(mpi), query)
    assert answer == CrossReference(True, (Identifier(B, "B-500"),))


def test_iti9_consumer_unknown_identifier_is_not_known(mpi: Mpi) -> None:
    query = iti9.build_query(Identifier(A, "A-404"), (B,))
    assert iti9.ask(mllp_peer(mpi), query) == CrossReference(False, ())


def test_iti9_consumer_unknown_domain_is_typed_error(mpi: Mpi) -> None:
    query = iti9.build_query(Identifier(A, "A-500"), (B, "2.999.74.99"))
    with pytest.raises(iti9.UnknownPixDomainError) as caught:
        iti9.ask(mllp_peer(mpi), query)
    assert caught.value.domains == ("2.999.74.99",)
    assert caught.value.location == ("QPD", "1", "4", "2")


def test_iti83_consumer_gets_the_other_identifier_from_spiders_mpi(mpi: Mpi) -> None:
    answer = iti83.ask(pixm_peer(mpi), Identifier(A, "A-500"), (B, C))
    assert answer == CrossReference(True, (Identifier(B, "B-500"),))


def test_iti83_consumer_unknown_identifier_is_not_known(mpi: Mpi) -> None:
    answer = iti83.ask(pixm_peer(mpi), Identifier(A, "A-404"), (B,))
    assert answer == CrossReference(False, ())


def test_iti83_consumer_unknown_target_domain_is_typed_error(mpi: Mpi) -> None:
    with pytest.raises(iti83.UnknownPixDomainError) as caught:
        iti83.ask(pixm_peer(mpi), Identifier(A, "A-500"), ("2.999.74.99",))
    assert (caught.value.status, caught.value.domains) == (403, ("2.999.74.99",))


@pytest.mark.parametrize("mode", ["iti9", "iti83"])
def test_site_identifiers_links_what_spiders_mpi_knows(
    mpi: Mpi, settings: Settings, mode: str
) -> None:
    sites = Directory(
        sites=(
            Site("site-a", "SITE_A", "127.0.0.1", 1, A),
            Site("site-b", "SITE_B", "127.0.0.1", 2, B),
        )
    )
    local = replace(
        settings,
        directory=sites,
        pix_source=mode,
        pix_mllp_host="127.0.0.1",
        pix_mllp_port=mpi.mllp_port,
        pix_url=mpi.fhir,
        pix_auth_header=mpi.auth,
        pix_timeout=TIMEOUT,
    )
    rt = Runtime(local)
    try:
        with rt.db.session() as session:
            record = PatientRecord(identifiers=(Identifier(A, "A-500"),))
            patient = patient_index.feed(session, record, {}).patient
            found = pix_source.site_identifiers(local, session, patient, "r-peer")
            history = [(h.kind, h.new_value, h.detail) for h in patient.history]
    finally:
        rt.db.dispose()
    assert found == {A: "A-500", B: "B-500"}
    assert found.source is PixSource(mode)
    assert history == [("created", None, None), ("linked", "B-500", LINKED_DETAIL)]
    assert_all_audit_valid(mpi.data_dir)


def test_consumers_against_a_stopped_mpi_fail_within_the_timeout(
    tmp_path: Path,
) -> None:
    stopped = start_mpi(tmp_path)
    assert stopped.server.stop() == 0
    for ask in (
        lambda: iti9.ask(
            iti9.MllpPeer("127.0.0.1", stopped.mllp_port, 2.0),
            iti9.build_query(Identifier(A, "A-500"), (B,)),
        ),
        lambda: iti83.ask(
            iti83.PixmPeer(stopped.fhir, 2.0), Identifier(A, "A-500"), (B,)
        ),
    ):
        started = time.monotonic()
        with pytest.raises(PeerError) as caught:
            ask()
        assert time.monotonic() - started < 2.5
        assert not isinstance(caught.value, iti9.PixQueryError)
