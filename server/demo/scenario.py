"""The demo's regional network: three sites, their patients and studies.

Patient 1 has studies at two sites under two different local IDs, linked by
one identity feed that carries both IDs and the INS. Patient 2 is a homonym of
patient 1 (same name, same birth date, different INS) with studies at two
sites: never registered, never fetched. Patient 3 has studies at the third
site only. Some of patient 1's studies fall outside the automatic selection
rule (too old, or a modality not selected by default).

All names, identifiers and INS numbers are invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from mappings.identifiers import INS_NIR
from server.demo.studies import DemoPatient, SeriesSpec, StudySpec


@dataclass(frozen=True)
class DemoSite:
    """A simulated site's identity."""

    name: str
    ae_title: str
    issuer: str
    domain: str


@dataclass(frozen=True)
class DemoPerson:
    """A person of the scenario and their local IDs per site."""

    key: str
    family: str
    given: str
    birth_date: str
    sex: str
    ins: str
    local_ids: dict[str, str]
    registered: bool


@dataclass(frozen=True)
class DemoStudy:
    """A study placed at a site, and whether the rule should select it."""

    person: str
    site: str
    spec: StudySpec
    seed: int
    expect_selected: bool


SITES = (
    DemoSite("chu-nord", "CHU_NORD", "CHU_NORD", "2.999.1.1"),
    DemoSite("ch-valmont", "CH_VALMONT", "CH_VALMONT", "2.999.1.2"),
    DemoSite("clinique-sud", "CLIN_SUD", "CLINIQUE_SUD", "2.999.1.3"),
)

PEOPLE = (
    DemoPerson(
        "leveque",
        "LÉVÊQUE",
        "Noël",
        "19580314",
        "M",
        "158037512345678",
        {"chu-nord": "NORD-100234", "ch-valmont": "VAL-558812"},
        True,
    ),
    DemoPerson(
        "leveque-homonym",
        "LÉVÊQUE",
        "Noël",
        "19580314",
        "M",
        "158037598765432",
        {"chu-nord": "NORD-100871", "clinique-sud": "SUD-7733"},
        False,
    ),
    DemoPerson(
        "desoeuvres",
        "DESŒUVRES",
        "Marie-Hélène",
        "19711102",
        "F",
        "271117512300042",
        {"clinique-sud": "SUD-4410"},
        True,
    ),
)

INS_SYSTEM = INS_NIR


def site(name: str) -> DemoSite:
    """The demo site called `name`."""
    return next(s for s in SITES if s.name == name)


def person(key: str) -> DemoPerson:
    """The demo person called `key`."""
    return next(p for p in PEOPLE if p.key == key)


def studies(today: date) -> list[DemoStudy]:
    """Every study of the scenario, dated relative to `today`."""

    def when(days: int) -> str:
        return (today - timedelta(days=days)).strftime("%Y%m%d")

    def spec(
        key: str,
        site_name: str,
        days: int,
        description: str,
        series: tuple[SeriesSpec, ...],
        accession: str,
    ) -> StudySpec:
        who, where = person(key), site(site_name)
        return StudySpec(
            patient=DemoPatient(
                who.local_ids[site_name],
                where.issuer,
                where.domain,
                who.family,
                who.given,
                who.birth_date,
                who.sex,
            ),
            study_date=when(days),
            description=description,
            series=series,
            accession_number=accession,
        )

    ct = SeriesSpec("CT", "Thorax sans injection", 40)
    ct_inj = SeriesSpec("CT", "Thorax-abdomen-pelvis portal", 40)
    ct_lung = SeriesSpec("CT", "Thorax parenchyme", 20)
    mr_t1 = SeriesSpec("MR", "T1 axial", 24, 256, 256)
    mr_flair = SeriesSpec("MR", "FLAIR axial", 24, 256, 256)
    return [
        DemoStudy(
            "leveque",
            "chu-nord",
            spec(
                "leveque",
                "chu-nord",
                60,
                "TDM TAP bilan",
                (ct, ct_inj, ct_lung),
                "NORD24001",
            ),
            1001,
            True,
        ),
        DemoStudy(
            "leveque",
            "chu-nord",
            spec(
                "leveque",
                "chu-nord",
                1200,
                "IRM cérébrale ancienne",
                (mr_t1,),
                "NORD19007",
            ),
            1002,
            False,
        ),
        DemoStudy(
            "leveque",
            "ch-valmont",
            spec(
                "leveque",
                "ch-valmont",
                150,
                "IRM cérébrale",
                (mr_t1, mr_flair),
                "VAL24113",
            ),
            2001,
            True,
        ),
        DemoStudy(
            "leveque",
            "ch-valmont",
            spec(
                "leveque",
                "ch-valmont",
                20,
                "Radio thorax",
                (SeriesSpec("CR", "Thorax face", 1, 512, 512),),
                "VAL24190",
            ),
            2002,
            False,
        ),
        DemoStudy(
            "leveque-homonym",
            "chu-nord",
            spec(
                "leveque-homonym", "chu-nord", 30, "TDM thoracique", (ct,), "NORD24077"
            ),
            1003,
            False,
        ),
        DemoStudy(
            "leveque-homonym",
            "clinique-sud",
            spec(
                "leveque-homonym",
                "clinique-sud",
                90,
                "IRM pelvienne",
                (mr_t1,),
                "SUD24031",
            ),
            3001,
            False,
        ),
        DemoStudy(
            "desoeuvres",
            "clinique-sud",
            spec(
                "desoeuvres",
                "clinique-sud",
                45,
                "TDM abdomino-pelvienne",
                (
                    SeriesSpec("CT", "Abdomen portal", 30),
                    SeriesSpec("CT", "Abdomen tardif", 30),
                ),
                "SUD24052",
            ),
            3002,
            True,
        ),
    ]


def patient_resource(who: DemoPerson) -> dict[str, object]:
    """The FHIR Patient that feeds the index with every ID of `who`."""
    identifiers: list[dict[str, object]] = [
        {
            "system": f"urn:oid:{INS_SYSTEM}",
            "value": who.ins,
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "INS",
                    }
                ]
            },
        }
    ]
    for site_name, local_id in who.local_ids.items():
        identifiers.append(
            {
                "system": f"urn:oid:{site(site_name).domain}",
                "value": local_id,
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "PI",
                        }
                    ]
                },
            }
        )
    birth = who.birth_date
    return {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"use": "official", "family": who.family, "given": [who.given]}],
        "gender": {"M": "male", "F": "female"}.get(who.sex, "unknown"),
        "birthDate": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
    }


def appointment_resource(
    patient_id: str, start: str, end: str, key: str
) -> dict[str, object]:
    """The FHIR Appointment registering `patient_id` for the demo board."""
    return {
        "resourceType": "Appointment",
        "identifier": [{"system": "urn:oid:2.999.20.1", "value": f"RCP-DEMO-{key}"}],
        "status": "booked",
        "serviceType": [{"text": "RCP thoracique"}],
        "start": start,
        "end": end,
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {
                "actor": {
                    "reference": "Location/rcp-thorax-chu-nord",
                    "display": "RCP thoracique - CHU Nord",
                },
                "status": "accepted",
            },
        ],
    }
