"""Objects researchers derive from the pseudonymized data (SEG, SR, PR, derived images).

They come back through the research surface (STOW-RS by a researcher), not the ingest
boundary, so they are already pseudonymous: their UIDs and dates are the project's and are
kept as they are (remapping them would break the references to the source series). What can
still carry an identifier is what a person typed, and what a tool copied that we never saw:

- free text (LO, SH, ST, LT, UT, UC at any depth) is cleaned by the same `TextCleaner` as at
  ingest (e-mails, phone numbers, NIR, dates, addresses, titled names);
- private elements are removed, all of them: no review of a tool's private dictionary has
  been done for derived objects, and the safe-private list describes acquisition devices;
- the object must attach to a study already in the project and carry that study's
  pseudonymous patient (PatientID equal; PatientName and PatientBirthDate equal when given).
  Anything else is refused with `NotAttached`, whose message says to use the ingest
  boundary, since an object about another patient, or with an original identity, belongs there.

Person names other than the patient's (ContentCreatorName, an SR observer) are the
researchers' own and are kept. The markers say the object is pseudonymous and name the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from app import __version__
from app.pseudo.engine import (
    TEXT_VRS,
    DeidentificationError,
    InstanceResult,
    _first,
    _strings,
    _vr_of,
    clean_text_element,
)
from app.pseudo.profile import describe_tag
from app.pseudo.text import PatientIdentifiers, TextCleaner

POLICY = "derived object: text cleaned, private removed"
_USE_INGEST = "use the ingest boundary (/ingest/studies) for new or identifiable data"
_UIDS = (0x0020000D, 0x0020000E, 0x00080018, 0x00080016)
_NAMES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


_SERIES_UID, _REFERENCED_SOP = 0x0020000E, 0x00081155


@dataclass
class References:
    """UIDs an object references inside its sequences (ReferencedSeriesSequence, Source Image
    Sequence, SR evidence…): series directly, instances by ReferencedSOPInstanceUID."""

    series: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)


class NotAttached(DeidentificationError):
    """The object does not belong to a study and patient of the project (no value quoted)."""


@dataclass(frozen=True)
class StudyPatient:
    """The pseudonymous patient of a stored study, as the index holds it."""

    patient_id: str
    patient_name: str
    birth_date: str


# Looks a study up in the project (None when the project has no such study).
StudyLookup = Callable[[str], StudyPatient | None]


class DerivedCleaner:
    """The research-side counterpart of `Deidentifier.deidentify` (same call shape)."""

    def __init__(self, study_patient: StudyLookup) -> None:
        self._study_patient = study_patient
        # No original identifiers are known on this side: the generic patterns only, and
        # dates in text are replaced rather than shifted (they may be real ones a person typed).
        self._cleaner = TextCleaner(PatientIdentifiers(), None)
        # What each object references (series and instances, in sequences): its sources, for
        # the derivation Provenance (app.provenance.record_derivation).
        self.references: dict[str, References] = {}

    def keeps_private(self, group: int, creator: str, element: int) -> bool:
        return False  # readers skip every top-level private element unread

    def deidentify(self, ds: Dataset, skipped_private: object = ()) -> InstanceResult:
        uids = []
        for tag, keyword in zip(_UIDS, _NAMES, strict=True):
            values = _strings(ds, tag) if tag in ds else []
            if not values:
                raise DeidentificationError(f"missing {keyword}: not a storable DICOM instance")
            uids.append(values[0].strip())
        study_uid, series_uid, sop_uid, sop_class = uids
        patient_id = self._check_patient(ds, study_uid)
        changes: list[tuple[str, str]] = []
        if skipped_private:
            changes.append(("(gggg,xxxx) private", "X"))
        references = References()
        self._walk(ds, "", changes, references)
        self.references[sop_uid] = references
        changes.extend(self._mark(ds))
        return InstanceResult(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            patient_pseudonym=patient_id,
            linkage={},
            changes=changes,
        )

    def _check_patient(self, ds: Dataset, study_uid: str) -> str:
        known = self._study_patient(study_uid)
        if known is None:
            raise NotAttached(f"the object's study is not in this project: {_USE_INGEST}")
        patient_id = _first(ds, 0x00100020)
        name, birth = _first(ds, 0x00100010), _first(ds, 0x00100030)
        if (
            patient_id != known.patient_id
            or (name and name != known.patient_name)
            or (birth and birth != known.birth_date)
        ):
            raise NotAttached(f"the object's patient is not its study's: {_USE_INGEST}")
        return patient_id

    def _walk(
        self, ds: Dataset, path: str, changes: list[tuple[str, str]], references: References
    ) -> None:
        for tag in sorted(ds._dict, key=int):  # pydicom's element store: see engine._walk
            number = int(tag)
            if number >> 16 & 1:
                del ds[tag]
                changes.append((f"{path}{describe_tag(number)}", "X"))
                continue
            if path and number in (_SERIES_UID, _REFERENCED_SOP):
                found = references.series if number == _SERIES_UID else references.instances
                found.update(v.strip() for v in _strings(ds, number) if v.strip())
            vr = _vr_of(ds.get_item(tag), number)
            if vr == "SQ":
                for i, item in enumerate(ds[tag].value):
                    self._walk(item, f"{path}{describe_tag(number)}[{i}].", changes, references)
            elif vr in TEXT_VRS and clean_text_element(ds, tag, vr, self._cleaner):
                changes.append((f"{path}{describe_tag(number)}", "C"))

    @staticmethod
    def _mark(ds: Dataset) -> list[tuple[str, str]]:
        """PatientIdentityRemoved YES, and our policy added to DeidentificationMethod."""
        changes = []
        if (_strings(ds, 0x00120062) if 0x00120062 in ds else []) != ["YES"]:
            ds[0x00120062] = DataElement(0x00120062, "CS", "YES")
            changes.append((describe_tag(0x00120062), "marker"))
        methods = _strings(ds, 0x00120063) if 0x00120063 in ds else []
        entry = f"imaging-depot {__version__} {POLICY}"[:64]
        if entry not in methods:
            ds[0x00120063] = DataElement(0x00120063, "LO", [*methods, entry])
            changes.append((describe_tag(0x00120063), "marker"))
        return changes
