"""The directory, pure: both importers (sample files and broken inputs), lookups, records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from bus.settings import RoutingSettings, Settings
from processors.directory import (
    Directory,
    InvalidEntry,
    InvalidRecord,
    Organization,
    Professional,
    Territory,
    decode_record,
    entry_record,
    from_bytes,
    from_csv,
    from_fhir_bundle,
    territory_from_settings,
    tombstone,
)
from processors.directory.cli import find, register
from schemas.codes import FINESS, RPPS
from schemas.sample_data import (
    CARDIOLOGIST,
    CHU,
    CPTS,
    DERMATOLOGIST,
    GP,
    HOSPITAL,
    HOSPITALIST,
    NURSE,
)

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
FHIR_SAMPLE = (SAMPLES / "annuaire.json").read_bytes()
CSV_SAMPLE = (SAMPLES / "annuaire.csv").read_text(encoding="utf-8")
EMAIL_TYPE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
CPTS_TERRITORY = territory_from_settings(RoutingSettings().territories[0])


# --- helpers -----------------------------------------------------------------------------
def bundle(*resources: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        }
    )


def pract(rid: str, rpps: str | None = "10003456125", family: str = "Bénard", **kw: Any) -> dict:
    idents = [{"system": RPPS, "value": "8" + rpps}] if rpps else []
    return {
        "resourceType": "Practitioner",
        "id": rid,
        "identifier": kw.pop("identifier", idents),
        "name": [{"family": family, "given": ["François"]}],
        **kw,
    }


def role(rid: str, practitioner: str, *, org: str | None = None, **kw: Any) -> dict:
    res = {
        "resourceType": "PractitionerRole",
        "id": rid,
        "practitioner": {"reference": practitioner},
    }
    if org:
        res["organization"] = {"reference": org}
    return {**res, **kw}


def org(rid: str, finess_value: str | None, name: str = "CH", **kw: Any) -> dict:
    idents = [{"system": FINESS, "value": finess_value}] if finess_value else []
    return {"resourceType": "Organization", "id": rid, "identifier": idents, "name": name, **kw}


def email(value: str, kind: str | None = None) -> dict:
    out: dict[str, Any] = {"system": "email", "value": value}
    if kind:
        out["extension"] = [{"url": EMAIL_TYPE, "valueCoding": {"code": kind}}]
    return out


def issues(result: Any) -> list[str]:
    return [str(i) for i in result.errors]


# --- the sample files --------------------------------------------------------------------
def test_fhir_sample_holds_every_sample_professional_with_mailbox() -> None:
    result = from_fhir_bundle(FHIR_SAMPLE)
    assert result.errors == () and result.warnings == ()
    assert result.counts() == {"practitioner": 6, "organization": 3, "territory": 0}
    d = Directory(result.entries)
    for info in (GP, CARDIOLOGIST, HOSPITALIST, NURSE, DERMATOLOGIST):
        p = d.practitioner(info.rpps)
        assert p is not None, info.rpps
        assert (p.family, p.given, p.mailbox) == (info.family, info.given, info.mailbox)
        assert p.profession == info.role and p.specialty == info.specialty
    assert d.practitioner(HOSPITALIST.rpps).finess == HOSPITAL.finess  # type: ignore[union-attr]
    assert d.practitioner(DERMATOLOGIST.rpps).finess == CHU.finess  # type: ignore[union-attr]
    # the nurse has no practice: her postcode comes from the Practitioner's address
    assert d.practitioner(NURSE.rpps).postcode == "03000"  # type: ignore[union-attr]
    # the cardiologist's cabinet has no FINESS: it only gives her postcode
    cardio = d.practitioner(CARDIOLOGIST.rpps)
    assert cardio is not None and cardio.finess is None and cardio.postcode == "03200"
    for o in (HOSPITAL, CPTS, CHU):
        found = d.organization(o.finess)
        assert found is not None and found.name == o.name and found.mailbox
    coordinator = d.practitioner("10047135792")
    assert coordinator is not None and coordinator.finess == CPTS.finess


def test_gp_mailbox_is_the_mssante_one_not_the_apicrypt_one() -> None:
    gp = Directory(from_fhir_bundle(FHIR_SAMPLE).entries).practitioner(GP.rpps)
    raw = FHIR_SAMPLE.decode()
    assert "francois.benard@medecin.apicrypt.org" in raw  # listed first in the role
    assert gp is not None and gp.mailbox == "francois.benard@medecin.mssante.fr"


def test_csv_sample_is_the_fhir_sample_plus_the_default_territory() -> None:
    csv_result = from_csv(CSV_SAMPLE)
    assert csv_result.errors == () and csv_result.warnings == ()
    fhir = set(from_fhir_bundle(FHIR_SAMPLE).entries)
    territories = [e for e in csv_result.entries if isinstance(e, Territory)]
    assert set(csv_result.entries) - set(territories) == fhir
    assert territories == [CPTS_TERRITORY]  # the file and the settings default agree


def test_from_bytes_detects_the_format() -> None:
    assert from_bytes(FHIR_SAMPLE, "export.JSON").counts()["practitioner"] == 6
    assert from_bytes(FHIR_SAMPLE, "no-extension").counts()["organization"] == 3
    assert from_bytes(CSV_SAMPLE.encode(), "annuaire.csv").counts()["territory"] == 1
    bom = "\ufeff".encode() + CSV_SAMPLE.encode()
    assert from_bytes(bom, "excel-export.csv").errors == ()


# --- FHIR: broken inputs and rules -------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "Bundle: not JSON"),
        (b'{"resourceType": "Patient"}', "Bundle: not a FHIR Bundle"),
        (b'{"resourceType": "Bundle", "entry": {}}', "Bundle.entry: must be an array"),
    ],
)
def test_fhir_unreadable_documents(data: bytes, expected: str) -> None:
    result = from_fhir_bundle(data)
    assert result.entries == ()
    assert issues(result)[0].startswith(expected)


def test_fhir_errors_are_located_and_good_resources_still_imported() -> None:
    result = from_fhir_bundle(
        bundle(
            pract("ok", "10012345673"),
            pract("short", identifier=[{"system": RPPS, "value": "8123"}]),
            pract("none", None),
            pract("noname", "10024681354", family=""),
            role("r1", "Practitioner/ghost"),
            org("badfiness", "1ABC"),
            pract(
                "twice",
                identifier=[
                    {"system": RPPS, "value": "810003456125"},
                    {"system": "https://rpps.esante.gouv.fr", "value": "10012345673"},
                ],
            ),
        )
    )
    assert [e.key for e in result.entries] == ["practitioner/10012345673"]
    assert result.warnings == ()  # a refused organisation is not also "without FINESS"
    assert issues(result) == [
        "Bundle.entry[5] (Organization/badfiness): idNatStruct '1ABC' is not '1' + 9-character"
        " FINESS",
        "Bundle.entry[4] (PractitionerRole/r1).practitioner: Practitioner/ghost is not a"
        " Practitioner of the bundle",
        "Bundle.entry[1] (Practitioner/short): idNatPs '8123' is neither '8' + 11-digit RPPS nor"
        " ADELI",
        f"Bundle.entry[2] (Practitioner/none): no RPPS identifier ({RPPS} '8'+RPPS or"
        " https://rpps.esante.gouv.fr)",
        "Bundle.entry[3] (Practitioner/noname): family name is required",
        "Bundle.entry[6] (Practitioner/twice): conflicting RPPS identifiers ['10003456125',"
        " '10012345673']",
    ]


def test_fhir_resource_of_the_wrong_shape_is_an_error_not_a_crash() -> None:
    result = from_fhir_bundle(
        bundle(
            role("r", "Practitioner/p") | {"practitioner": "Practitioner/p"},
            pract("p", "10003456125", address=["1 rue de Paris, 03000 Moulins"]),
            pract("q", "10012345673"),
        )
    )
    assert [e.key for e in result.entries] == ["practitioner/10012345673"]
    assert [i.location for i in result.errors] == [
        "Bundle.entry[0] (PractitionerRole/r)",
        "Bundle.entry[1] (Practitioner/p)",
    ]
    assert all("malformed resource" in i.message for i in result.errors)


def test_fhir_adeli_only_and_finess_less_organisations_are_warnings() -> None:
    result = from_fhir_bundle(
        bundle(
            pract("adeli", identifier=[{"system": RPPS, "value": "0031234567"}]),
            org("cab", None, identifier=[{"system": FINESS, "value": "384512345600018"}]),
        )
    )
    assert result.errors == () and result.entries == ()
    assert [str(w) for w in result.warnings] == [
        "Bundle.entry[0] (Practitioner/adeli): ADELI-only professional (no RPPS): skipped",
        "Bundle.entry[1] (Organization/cab): no FINESS identifier: not imported",
    ]


def test_fhir_mailbox_rules() -> None:
    untyped = pract("a", "10003456125", telecom=[email("a@cabinet.fr")])
    apicrypt_only = pract("b", "10012345673", telecom=[email("b@x.apicrypt.org", "APICRYPT")])
    mixed = pract(
        "c", "10024681354", telecom=[email("c@gmail.com"), email("c@x.mssante.fr", "MSSANTE")]
    )
    old = pract("d", "10035715928", telecom=[{**email("old@x.mssante.fr"), "use": "old"}])
    d = Directory(from_fhir_bundle(bundle(untyped, apicrypt_only, mixed, old)).entries)
    assert d.practitioner("10003456125").mailbox == "a@cabinet.fr"  # type: ignore[union-attr]
    assert d.practitioner("10012345673").mailbox is None  # type: ignore[union-attr]
    assert d.practitioner("10024681354").mailbox == "c@x.mssante.fr"  # type: ignore[union-attr]
    assert d.practitioner("10035715928").mailbox is None  # type: ignore[union-attr]


def test_fhir_role_with_a_mailbox_wins_and_inactive_roles_are_ignored() -> None:
    data = bundle(
        pract("p", "10003456125"),
        org("ch", "1" + HOSPITAL.finess, address=[{"postalCode": "03000"}]),
        org("chu", "1" + CHU.finess),
        role(
            "inactive",
            "Practitioner/p",
            org="Organization/chu",
            active=False,
            telecom=[email("old@chu.mssante.fr", "MSSANTE")],
        ),
        role("no-mail", "Practitioner/p", org="Organization/chu"),
        role(
            "hospital",
            "https://api.example/fhir/Practitioner/p",
            org="Organization/ch",
            telecom=[email("p@ch-moulins.mssante.fr", "MSSANTE")],
        ),
    )
    p = Directory(from_fhir_bundle(data).entries).practitioner("10003456125")
    assert p is not None
    assert (p.mailbox, p.finess, p.postcode) == (
        "p@ch-moulins.mssante.fr",
        HOSPITAL.finess,
        "03000",
    )


def test_fhir_duplicate_practitioner_last_wins_with_warning() -> None:
    result = from_fhir_bundle(bundle(pract("a"), pract("b", family="Bénard-Roux")))
    assert [e.family for e in result.entries] == ["Bénard-Roux"]  # type: ignore[union-attr]
    assert "also at Bundle.entry[0] (Practitioner/a); this one wins" in str(result.warnings[0])


# --- CSV: broken inputs and rules --------------------------------------------------------
HEADER = "kind;id;family;given;name;profession;specialty;mailbox;finess;postcode\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("practitioner;1000345612;A;B;;10;;;;", "RPPS must be 11 digits, got '1000345612'"),
        ("practitioner;10003456125;;B;;10;;;;", "family name is required"),
        ("practitioner;10003456125;A;B;;10;;not-a-mail;;", "mailbox 'not-a-mail' is not an e-mail"),
        ("practitioner;10003456125;A;B;;médecin;;;;", "profession must be a 2-digit TRE_G15"),
        ("practitioner;10003456125;A;B;;10;;;03078010;", "FINESS must be 9 characters"),
        ("practitioner;10003456125;A;B;;10;;;;3000", "postcode must be 5 digits, got '3000'"),
        ("organization;03078010X;;;CH;;;;;", "FINESS must be 9 characters, got '03078010X'"),
        ("organization;030780100;;;;;;;;", "name is required"),
        ("doctor;10003456125;A;B;;;;;;", "kind 'doctor' is not practitioner, organization or"),
        ("territory;t1;;;T;;;c@x.mssante.fr;;03", "coordinator name (columns 'given', 'family')"),
        ("territory;t1;R;C;T;;;;;03", "coordinator mailbox (column 'mailbox') is required"),
        ("territory;t 1;R;C;T;;;c@x.mssante.fr;;03", "territory id must be letters"),
        ("territory;t1;R;C;T;;;c@x.mssante.fr;;03 6x", "postcode prefix must be 1-5 digits"),
        ("practitioner;10003456125;A;B", "4 fields, the header has 10"),
    ],
)
def test_csv_errors_name_the_line(line: str, expected: str) -> None:
    text = HEADER + "organization;030780100;;;CH Moulins;;;;;03000\n" + line + "\n"
    result = from_csv(text)
    assert [e.key for e in result.entries] == ["organization/030780100"]
    assert len(result.errors) == 1
    assert result.errors[0].location == "line 3"
    assert expected in result.errors[0].message


def test_csv_header_problems() -> None:
    assert issues(from_csv("kind;identifier\n")) == [
        "line 1: unknown column(s) ['identifier']; known: kind, id, family, given, name,"
        " profession, specialty, mailbox, finess, postcode",
        "line 1: the header needs at least the columns 'kind' and 'id'",
    ]
    assert issues(from_csv("# only a comment\n\n")) == [
        "line 1: no header row (kind;id;family;given;name;…)"
    ]


def test_csv_comma_quotes_column_order_and_identifier_prefixes() -> None:
    text = (
        "# exported by a spreadsheet\n"
        "id,kind,name,family,given,mailbox,postcode\n"
        '1030780100,organisation,"Centre hospitalier de Moulins, site Yzeure",,,,03400\n'
        "810003456125,practitioner,,Bénard,François,f@medecin.mssante.fr,03000\n"
    )
    result = from_csv(text)
    assert result.errors == ()
    assert result.entries == (
        Organization(
            finess="030780100", name="Centre hospitalier de Moulins, site Yzeure", postcode="03400"
        ),
        Professional(
            rpps="10003456125",
            family="Bénard",
            given="François",
            mailbox="f@medecin.mssante.fr",
            postcode="03000",
        ),
    )


def test_csv_duplicate_last_line_wins_and_non_utf8_is_located() -> None:
    text = HEADER + "organization;030780100;;;Old;;;;;\norganization;030780100;;;New;;;;;\n"
    result = from_csv(text)
    assert [e.name for e in result.entries] == ["New"]  # type: ignore[union-attr]
    assert str(result.warnings[0]) == "line 3: organization/030780100 also at line 2; this one wins"
    latin1 = (HEADER + "practitioner;10003456125;Bénard;F;;;;;;\n").encode("latin-1")
    assert issues(from_bytes(latin1, "x.csv"))[0].startswith("line 2: not UTF-8")


# --- lookups -----------------------------------------------------------------------------
def territory(tid: str, finess: tuple[str, ...] = (), postcodes: tuple[str, ...] = ()) -> Territory:
    return Territory(
        id=tid,
        name=f"CPTS {tid}",
        coordinator_name="C",
        coordinator_mailbox=f"coordination@{tid}.mssante.fr",
        finess=finess,
        postcodes=postcodes,
    )


def test_territory_for_finess_first_then_longest_postcode_prefix() -> None:
    allier = territory("allier", finess=(HOSPITAL.finess,), postcodes=("03",))
    puy = territory("puy", postcodes=("63",))
    clermont = territory("clermont", postcodes=("630",))
    d = Directory(
        [allier, puy, clermont, Organization(finess=CHU.finess, name="CHU", postcode="63003")]
    )
    # the hospital's territory wins even for a patient living elsewhere
    assert d.territory_for(HOSPITAL.finess, "63100") == allier
    assert d.territory_for(None, "63000") == clermont  # "630" is longer than "63"
    assert d.territory_for(None, "63100") == puy
    assert d.territory_for(None, "03 200") == allier
    assert d.territory_for("999999999", "75015") is None
    # an unlisted facility known to the directory: its own postcode decides
    assert d.territory_for(CHU.finess, None) == clermont
    assert d.territory_for(None, None) is None


def test_settings_territories_are_defaults_that_imports_override() -> None:
    d = Directory(defaults=[CPTS_TERRITORY])
    assert d.territory_for(HOSPITAL.finess, None) == CPTS_TERRITORY
    assert d.territory_for(None, "03000") == CPTS_TERRITORY
    moved = territory("cpts-bords-allier", postcodes=("0320",))
    d.apply(*entry_record(moved))
    assert d.territory("cpts-bords-allier") == moved
    assert d.territory_for(HOSPITAL.finess, "03000") is None  # the override lists no FINESS
    assert d.territory_for(None, "03200") == moved
    d.apply(*tombstone(moved.key))
    assert d.territory_for(HOSPITAL.finess, None) == CPTS_TERRITORY  # the default is back


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.lists(st.text("0123", min_size=1, max_size=3))),
        max_size=6,
    ),
    st.text("0123", min_size=5, max_size=5),
)
def test_postcode_lookup_is_longest_prefix_smallest_id(
    spec: list[tuple[str, list[str]]], postcode: str
) -> None:
    d = Directory(territory(tid, postcodes=tuple(prefixes)) for tid, prefixes in spec)
    live = {t.id: t for t in d.territories()}  # a repeated id: the last one is live
    best = max(
        (
            (len(p), -ord(t.id), t)
            for t in live.values()
            for p in t.postcodes
            if postcode.startswith(p)
        ),
        default=None,
        key=lambda x: (x[0], x[1]),
    )
    assert d.territory_for(None, postcode) == (best[2] if best else None)


# --- records and tombstones --------------------------------------------------------------
def test_records_round_trip_and_tombstones_delete() -> None:
    entries = [*from_csv(CSV_SAMPLE).entries]
    d = Directory()
    for e in entries:
        key, value = entry_record(e)
        assert key == e.key.encode()
        assert decode_record(key, value) == e
        assert d.apply(key, value) == e
    assert len(d) == 10 and d.counts() == {"practitioner": 6, "organization": 3, "territory": 1}
    assert d.apply(*tombstone(f"practitioner/{GP.rpps}")) is None
    assert d.practitioner(GP.rpps) is None and len(d) == 9
    d.apply(*tombstone("practitioner/10000000000"))  # deleting the unknown is harmless
    assert len(d) == 9


def test_unreadable_records_are_refused_and_change_nothing() -> None:
    d = Directory([Organization(finess=HOSPITAL.finess, name="CH")])
    good_key, good_value = entry_record(Organization(finess=CHU.finess, name="CHU"))
    bad = [
        (b"organization/630000677", b"{not json"),
        (b"organization/630000677", b'{"kind": "patient"}'),
        (b"organization/030780100", good_value),  # key and entry disagree
        (good_key, orjson.dumps({"kind": "organization", "finess": "63", "name": "CHU"})),
    ]
    for key, value in bad:
        with pytest.raises(InvalidRecord):
            d.apply(key, value)
    assert [e.key for e in d.entries()] == ["organization/030780100"]
    assert d.organization(HOSPITAL.finess).name == "CH"  # type: ignore[union-attr]


def test_newer_record_fields_are_ignored() -> None:
    key, value = entry_record(Organization(finess=CHU.finess, name="CHU"))
    newer = orjson.dumps({**orjson.loads(value), "v": 2, "opening_hours": "8-18"})
    assert decode_record(key, newer) == Organization(finess=CHU.finess, name="CHU")


def test_model_validation_messages() -> None:
    with pytest.raises(InvalidEntry, match="RPPS must be 11 digits, got '8100034561'"):
        Professional(rpps="8100034561", family="A", given="B")
    with pytest.raises(InvalidEntry, match="FINESS must be 9 characters"):
        Organization(finess="0307801000", name="CH")
    assert Organization(finess="2A0000154", name="CH Ajaccio").finess == "2A0000154"
    with pytest.raises(InvalidEntry, match="postcode prefix must be 1-5 digits"):
        territory("t", postcodes=("",))


# --- the CLI, without a broker -----------------------------------------------------------
def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None: ...

    def arun(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run(coro)

    settings: Callable[[], Settings] = Settings
    register(app, Console(width=200), settings, arun)
    return app


def test_cli_import_dry_run_reports_counts_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(
        cli_app(), ["directory", "import", str(SAMPLES / "annuaire.csv"), "--dry-run"]
    )
    assert ok.exit_code == 0, ok.output
    assert "6 practitioner(s), 3 organisation(s), 1 territory(ies), 0 error(s)" in ok.output
    assert "nothing published (dry run)" in ok.output
    broken = tmp_path / "broken.csv"
    broken.write_text(HEADER + "practitioner;123;A;B;;;;;;\n", encoding="utf-8")
    bad = runner.invoke(cli_app(), ["directory", "import", str(broken)])
    assert bad.exit_code == 1
    assert "error line 2: RPPS must be 11 digits, got '123'" in bad.output


def test_cli_find_accepts_national_identifier_forms() -> None:
    d = Directory(from_csv(CSV_SAMPLE).entries)
    assert find(d, GP.rpps) == find(d, "8" + GP.rpps) == d.practitioner(GP.rpps)
    assert find(d, "1" + HOSPITAL.finess) == d.organization(HOSPITAL.finess)
    assert find(d, "cpts-bords-allier") == CPTS_TERRITORY
    assert find(d, f"organization/{CHU.finess}") == d.organization(CHU.finess)
    assert find(d, "nobody") is None
