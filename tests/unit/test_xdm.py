"""IHE_XDM.ZIP: layout, METADATA.XML content, determinism and traversal-proof names."""

from __future__ import annotations

import copy
import hashlib
import io
import posixpath
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.bundle_view import BundleError, BundleView
from adapters.mssante import ebrim
from adapters.mssante.xdm import (
    METADATA_PATH,
    build_xdm,
    recipient_hl7,
    safe_file_name,
    safe_member_path,
)
from schemas.samples import sample_bundle
from schemas.workitem import Recipient, RecipientKind

R = f"{{{ebrim.NS_RIM}}}"
TS = "2025-03-19T12:00:00+01:00"
INS_CX = "258030319004510^^^&1.2.250.1.213.1.4.8&ISO^NH"


def bundle(event: str = "discharge.completed") -> dict:
    return sample_bundle(event, event_id="7d0c5a4e-1111-4a51-8d0c-3f1b2a9c7d10", timestamp=TS)


def open_zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def metadata(data: bytes) -> ET.Element:
    return ET.fromstring(open_zip(data).read(METADATA_PATH))


def slots(el: ET.Element) -> dict[str, list[str]]:
    return {
        s.get("name"): [v.text for v in s.iter(f"{R}Value")]
        for s in el.findall(f"{R}Slot")  # direct children only
    }


def classification(el: ET.Element, scheme: str) -> ET.Element:
    found = [c for c in el.findall(f"{R}Classification") if c.get("classificationScheme") == scheme]
    assert len(found) == 1, scheme
    return found[0]


def external(el: ET.Element, scheme: str) -> str:
    found = [
        e.get("value")
        for e in el.findall(f"{R}ExternalIdentifier")
        if e.get("identificationScheme") == scheme
    ]
    assert len(found) == 1, scheme
    return found[0]


def test_zip_holds_the_three_metadata_files_and_the_documents() -> None:
    b = bundle()
    data = build_xdm(b, submission_key="item-1")
    zf = open_zip(data)
    assert zf.namelist() == [
        "README.TXT",
        "INDEX.HTM",
        "IHE_XDM/SUBSET01/METADATA.XML",
        "IHE_XDM/SUBSET01/DOC0001.TXT",
    ]
    assert zf.testzip() is None
    letter = BundleView(b).documents()[0]
    assert zf.read("IHE_XDM/SUBSET01/DOC0001.TXT") == letter.content
    assert b"DOC0001.TXT" in zf.read("INDEX.HTM")
    assert zf.read("README.TXT").isascii()


def test_metadata_carries_ins_loinc_author_time_hash_and_size() -> None:
    data = build_xdm(bundle(), submission_key="item-1")
    root = metadata(data)
    assert root.tag == f"{{{ebrim.NS_LCM}}}SubmitObjectsRequest"
    objects = root.find(f"{R}RegistryObjectList")
    assert objects is not None
    (doc,) = objects.findall(f"{R}ExtrinsicObject")
    assert doc.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
    assert doc.get("mimeType") == "text/plain"
    content = open_zip(data).read("IHE_XDM/SUBSET01/DOC0001.TXT")
    s = slots(doc)
    assert s["hash"] == [hashlib.sha1(content).hexdigest()]
    assert s["size"] == [str(len(content))]
    assert s["creationTime"] == ["20250317083000"]  # 09:30 Paris = 08:30 UTC
    assert s["languageCode"] == ["fr-FR"]
    assert s["sourcePatientId"] == [INS_CX]
    assert s["URI"] == ["DOC0001.TXT"]
    assert "PID-5|Lefèvre^Hélène^^^^^L" in s["sourcePatientInfo"]

    type_code = classification(doc, "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983")
    assert type_code.get("nodeRepresentation") == "11490-0"
    assert slots(type_code)["codingScheme"] == ["2.16.840.1.113883.6.1"]
    author = classification(doc, "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d")
    person = slots(author)["authorPerson"][0]
    assert person.startswith("810098765430^Lacroix-Dupré^Jérôme^")
    assert person.endswith("&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS")
    assert slots(author)["authorInstitution"][0].endswith("&ISO^IDNST^^^1030780100")
    for scheme in (
        "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",  # classCode
        "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",  # formatCode
        "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",  # healthcareFacilityTypeCode
        "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",  # practiceSettingCode
        "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",  # confidentialityCode
    ):
        cl = classification(doc, scheme)
        assert cl.get("nodeRepresentation")
        assert slots(cl)["codingScheme"]
    assert classification(doc, ebrim.DE_CONFIDENTIALITY).get("nodeRepresentation") == "N"
    assert external(doc, "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427") == INS_CX
    assert external(doc, "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab").startswith("2.25.")


def test_submission_set_and_has_member_association() -> None:
    objects = metadata(build_xdm(bundle(), submission_key="item-1"))[0]
    (package,) = objects.findall(f"{R}RegistryPackage")
    ss = package.get("id")
    assert slots(package)["submissionTime"] == ["20250319110000"]
    assert external(package, "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446") == INS_CX
    assert external(package, "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832").startswith("2.25.")
    assert external(package, "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8").startswith("2.25.")
    content_type = classification(package, "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500")
    assert content_type.get("nodeRepresentation") == "11490-0"
    nodes = [
        c
        for c in objects.findall(f"{R}Classification")
        if c.get("classificationNode") == "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
    ]
    assert [c.get("classifiedObject") for c in nodes] == [ss]
    (assoc,) = objects.findall(f"{R}Association")
    assert assoc.get("associationType") == (
        "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
    )
    assert assoc.get("sourceObject") == ss
    assert assoc.get("targetObject") == objects.find(f"{R}ExtrinsicObject").get("id")
    assert slots(assoc)["SubmissionSetStatus"] == ["Original"]


def test_two_documents_two_entries() -> None:
    data = build_xdm(bundle("referral.completed"), submission_key="k")
    names = open_zip(data).namelist()
    assert names[-2:] == ["IHE_XDM/SUBSET01/DOC0001.TXT", "IHE_XDM/SUBSET01/DOC0002.TXT"]
    objects = metadata(data)[0]
    docs = objects.findall(f"{R}ExtrinsicObject")
    assert [slots(d)["URI"][0] for d in docs] == ["DOC0001.TXT", "DOC0002.TXT"]
    types = {classification(d, ebrim.DE_TYPE).get("nodeRepresentation") for d in docs}
    assert types == {"96349-6", "11488-4"}
    assert len(objects.findall(f"{R}Association")) == 2
    assert len({d.get("id") for d in docs}) == 2


def test_same_input_same_bytes() -> None:
    first = build_xdm(bundle(), submission_key="item-1")
    again = build_xdm(copy.deepcopy(bundle()), submission_key="item-1")
    assert first == again
    assert build_xdm(bundle(), submission_key="item-2") != first
    for info in open_zip(first).infolist():
        assert info.date_time == (2025, 3, 19, 11, 0, 0)


def test_intended_recipient_is_xon_xcn_xtn() -> None:
    r = Recipient(RecipientKind.PRACTITIONER, "10012345673", "a.b@x.mssante.fr")
    value = recipient_hl7(r)
    xon, xcn, xtn = value.split("|")
    assert xon == ""
    assert xcn.startswith("810012345673^")
    assert xtn == "^^Internet^a.b@x.mssante.fr"
    data = build_xdm(bundle(), submission_key="k", recipients=[r])
    package = metadata(data)[0].find(f"{R}RegistryPackage")
    assert slots(package)["intendedRecipient"] == [value]


def test_hostile_values_are_escaped_not_interpreted() -> None:
    b = bundle()
    for entry in b["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["name"][0]["family"] = 'Evil</rim:Value>&<x a="1">^|~\\\x00\x1b'
        if res["resourceType"] == "DocumentReference":
            res["content"][0]["attachment"]["title"] = "<script>alert(1)</script>"
    data = build_xdm(b, submission_key="k")
    root = metadata(data)  # still well-formed XML
    info = slots(root[0].find(f"{R}ExtrinsicObject"))["sourcePatientInfo"]
    pid5 = next(v for v in info if v.startswith("PID-5|"))
    assert pid5 == 'PID-5|Evil</rim:Value>\\T\\<x a="1">\\S\\\\F\\\\R\\\\E\\^Hélène^^^^^L'
    assert b"<script>" not in open_zip(data).read("INDEX.HTM")


def test_refuses_without_ins_or_documents_or_with_corrupt_bytes() -> None:
    with pytest.raises(BundleError, match="document"):
        build_xdm(bundle("discharge.planned"), submission_key="k")
    no_ins = bundle()
    for entry in no_ins["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = entry["resource"]["identifier"][1:]
    with pytest.raises(BundleError, match="INS"):
        build_xdm(no_ins, submission_key="k")
    corrupt = bundle()
    for entry in corrupt["entry"]:
        if entry["resource"]["resourceType"] == "DocumentReference":
            entry["resource"]["content"][0]["attachment"]["data"] = "SGVsbG8="
            del entry["resource"]["content"][0]["attachment"]["size"]
    with pytest.raises(BundleError, match="SHA-1"):
        build_xdm(corrupt, submission_key="k")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("/abs/path.txt", "abs_path.txt"),
        ("C:\\Windows\\system32\\cmd.exe", "C_Windows_system32_cmd.exe"),
        ("..", "document"),
        ("", "document"),
        ("\x00\x1b\r\n", "document"),
        ("Lettre de liaison à la sortie.pdf", "Lettre_de_liaison_a_la_sortie.pdf"),
        ("CON.txt", "_CON.txt"),
        ("a..b", "a.b"),
    ],
)
def test_safe_file_name_examples(name: str, expected: str) -> None:
    assert safe_file_name(name) == expected


def test_long_names_keep_their_extension() -> None:
    name = safe_file_name("x" * 500 + ".pdf")
    assert len(name) == 100
    assert name.endswith(".pdf")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_arbitrary_names_never_escape_the_zip_root(parts: list[str]) -> None:
    path = safe_member_path(*parts)
    assert not path.startswith("/")
    assert "\\" not in path and ":" not in path
    assert all(c.isprintable() and c.isascii() for c in path)
    assert all(seg not in ("", ".", "..") for seg in path.split("/"))
    assert not posixpath.normpath(path).startswith("..")


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_extracted_member_lands_inside_target(name: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(safe_member_path("IHE_XDM", name), b"x")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf) as zf:
        zf.extractall(tmp)
        root = Path(tmp).resolve()
        files = [p.resolve() for p in root.rglob("*") if p.is_file()]
        assert len(files) == 1
        assert files[0].is_relative_to(root)


# --- METADATA.XML is what ElementTree writes -----------------------------------------
# ebrim writes the XML itself (no tree, no generic serialiser); parsing it back and
# writing it with ET.indent + ET.tostring must give the very same bytes, whatever the
# values (escaping, empty elements, indentation, declaration included).


def elementtree_rewrite(xml: bytes) -> bytes:
    root = ET.fromstring(xml)  # bytes CareBus wrote in this test
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def with_values(family: str, title: str, language: str = "fr-FR") -> dict:
    b = bundle()
    for entry in b["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["name"][0]["family"] = family
        if res["resourceType"] == "DocumentReference":
            res["content"][0]["attachment"]["title"] = title
            res["content"][0]["attachment"]["language"] = language
    return b


@pytest.mark.parametrize("event", ["discharge.completed", "referral.completed"])
def test_metadata_bytes_are_elementtree_s(event: str) -> None:
    xml = open_zip(build_xdm(bundle(event), submission_key="item-1")).read(METADATA_PATH)
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<lcm:SubmitObjectsRequest")
    assert elementtree_rewrite(xml) == xml


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.sampled_from(["fr-FR", "", "a&b<c>"]))
def test_metadata_of_any_values_is_elementtree_s(family: str, title: str, language: str) -> None:
    b = with_values(family, title, language)
    xml = open_zip(build_xdm(b, submission_key="k")).read(METADATA_PATH)
    assert elementtree_rewrite(xml) == xml
    doc = ET.fromstring(xml)[0].find(f"{R}ExtrinsicObject")
    assert doc is not None
    name = doc.find(f"{R}Name/{R}LocalizedString")
    assert name is not None  # attribute values come back exactly
    assert name.get("value") == ebrim.xml_text(BundleView(b).documents()[0].title)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_oid_uuid_is_uuid5(name: str) -> None:
    assert ebrim.oid_uuid(name) == str(uuid.uuid5(uuid.NAMESPACE_OID, name))
