"""Synthetic identities injected into real files, and the check that none survives.

The people are invented; the files are pydicom's. Tests write the identity into standard,
private and nested attributes and free text, then look for every token in the output bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


@dataclass(frozen=True)
class Identity:
    family: str = "QUIMPERLE"
    given: str = "Hortensia"
    patient_id: str = "IPP80417263"
    other_id: str = "NDA5512093"
    accession: str = "ACC7730415"
    birth_date: str = "19560314"
    nir: str = "2 56 03 29 019 042 77"  # key 77 = 97 - (2560329019042 mod 97)
    phone: str = "06 12 34 56 78"
    email: str = "h.quimperle@example.org"
    street: str = "12 rue des Glycines"
    physician: str = "KERVADEC^Yannick"
    institution: str = "Clinique Saint-Exemple de Quimper"
    study_date: str = "20230917"

    def tokens(self) -> list[str]:
        """Strings that must not appear anywhere in a pseudonymized file."""
        return [
            self.family, self.given, self.patient_id, self.other_id, self.accession,
            self.birth_date, self.nir, self.nir.replace(" ", ""), self.phone, self.email,
            "Glycines", "KERVADEC", "Yannick", "Saint-Exemple", self.study_date, "17/09/2023",
        ]  # fmt: skip


def _item(**values) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def inject(ds: Dataset, who: Identity) -> Dataset:
    """Write `who` into the places identities hide: header, nested items, private, free text."""
    ds.PatientName = f"{who.family}^{who.given}"
    ds.PatientID = who.patient_id
    ds.OtherPatientIDs = who.other_id
    ds.PatientBirthDate = who.birth_date
    ds.PatientAddress = f"{who.street}, 29000 Quimper"
    ds.PatientTelephoneNumbers = who.phone
    ds.AccessionNumber = who.accession
    ds.StudyDate = who.study_date
    ds.InstitutionName = who.institution
    ds.ReferringPhysicianName = who.physician
    ds.OperatorsName = who.physician
    ds.StudyDescription = f"IRM cerebrale {who.family} {who.given}"
    ds.ImageComments = f"Patient {who.family}, NIR {who.nir}, tel {who.phone}, {who.email}"
    ds.OtherPatientIDsSequence = Sequence([_item(PatientID=who.other_id, TypeOfPatientID="TEXT")])
    ds.RequestAttributesSequence = Sequence(
        [
            _item(
                RequestedProcedureDescription=f"Controle {who.family}",
                RequestedProcedureID=who.accession,
            )
        ]
    )
    ds.ReferencedPatientSequence = Sequence([_item(ReferencedSOPInstanceUID="1.2.3.4.5.6.7")])
    ds.ContentSequence = Sequence(
        [
            _item(
                RelationshipType="CONTAINS",
                ValueType="TEXT",
                TextValue=f"Examen de Mme {who.family} le 17/09/2023, appeler le {who.phone}",
                PersonName=who.physician,
            )
        ]
    )
    block = ds.private_block(0x0011, "ACME HOSPITAL RIS 1.0", create=True)
    block.add_new(0x01, "LO", f"{who.family}^{who.given}")
    block.add_new(0x02, "LO", who.patient_id)
    return ds


def write_injected(src: Path, dst: Path, who: Identity) -> Path:
    ds = dcmread(src, force=True)
    inject(ds, who)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def leaked_tokens(data: bytes, who: Identity) -> list[str]:
    """Which tokens appear in `data`, in the encodings a DICOM file may use."""
    found = []
    for token in who.tokens():
        for variant in {token, token.upper()}:
            if variant.encode("latin-1") in data or variant.encode("utf-16-le") in data:
                found.append(token)
                break
    return found


def original_uids(paths: list[Path]) -> set[str]:
    """The SOP, study and series UIDs of identifiable files: none may come back from the server."""
    uids = set()
    for path in paths:
        ds = dcmread(path, force=True)
        uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    return uids
