"""A project's dataset description, as the data manager writes it (JSON or YAML).

pydantic checks it once, when it is saved, so the catalogue never meets a description it
cannot publish: every field that HealthDCAT-AP's NON_PUBLIC shapes require is either here
(title, description, keywords, contact point, HDAB…) or derived by the server (identifier,
access rights, distribution, counts). Errors come back as one readable line per problem
(`keywords: at least 1 item`), never echoing the value, which may be anything.

Access rights are not a choice: a pseudonymized imaging dataset is NON_PUBLIC (white paper;
HealthDCAT-AP), so the field only accepts that value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# EU Vocabularies "Data theme" (http://publications.europa.eu/resource/authority/data-theme):
# code → English label (the label is published with the concept, as the shapes require).
DATA_THEMES = {
    "AGRI": "Agriculture, fisheries, forestry and food",
    "ECON": "Economy and finance",
    "EDUC": "Education, culture and sport",
    "ENER": "Energy",
    "ENVI": "Environment",
    "GOVE": "Government and public sector",
    "HEAL": "Health",
    "INTR": "International issues",
    "JUST": "Justice, legal system and public safety",
    "OP_DATPRO": "Provisional data",
    "REGI": "Regions and cities",
    "SOCI": "Population and society",
    "TECH": "Science and technology",
    "TRAN": "Transport",
}
# HealthData@EU health categories with a label we know; other codes are accepted as codes.
HEALTH_CATEGORY_LABELS = {"EHRS": "Electronic health data from EHRs"}
# EU Vocabularies "Language" codes (three letters); the two-letter ISO 639-1 codes people
# type are accepted for the common ones and stored as the EU code.
LANGUAGES = {
    "ENG": ("en", "English"), "FRA": ("fr", "French"), "DEU": ("de", "German"),
    "SPA": ("es", "Spanish"), "ITA": ("it", "Italian"), "NLD": ("nl", "Dutch"),
    "POR": ("pt", "Portuguese"), "POL": ("pl", "Polish"), "SWE": ("sv", "Swedish"),
    "DAN": ("da", "Danish"), "FIN": ("fi", "Finnish"), "ELL": ("el", "Greek"),
}  # fmt: skip
_TWO_LETTER = {two: code for code, (two, _) in LANGUAGES.items()}
_EMAIL = re.compile(r"^[^@\s<>\"(),;:\\\[\]]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s<>\"{}|\\^`]*)?$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")
_Reachable = TypeVar("_Reachable", "Organisation", "ContactPoint")
HDH = {
    "name": "Plateforme des données de santé (Health Data Hub)",
    "url": "https://www.health-data-hub.fr/",
}


class DescriptionError(ValueError):
    """The description cannot be saved; `problems` has one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _url(value: str) -> str:
    if len(value) > 2000 or not _URL.match(value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("expected an e-mail address")
    return value


Url = Annotated[str, AfterValidator(_url)]
Email = Annotated[str, AfterValidator(_email)]
Text = Annotated[str, Field(min_length=1, max_length=300)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def _reachable(org: _Reachable) -> _Reachable:
    """At least one way to reach it (HealthDCAT-AP: a cv:ContactPoint with an e-mail or a
    contact page)."""
    if org.email is None and org.url is None:
        raise ValueError("give an email or a url")
    return org


class Organisation(_Strict):
    """An organisation with one way to reach it (HealthDCAT-AP: one cv:ContactPoint with an
    e-mail or a contact page)."""

    name: Text
    email: Email | None = None
    url: Url | None = None
    _reachable = model_validator(mode="after")(_reachable)


class ContactPoint(_Strict):
    """Whom a requester writes to about the dataset (dcat:contactPoint, a vCard)."""

    name: Text | None = None
    email: Email | None = None
    url: Url | None = None
    _reachable = model_validator(mode="after")(_reachable)


class Producer(_Strict):
    """Who produced the data (rec. 4.8): the centres, the experts and annotators, the funders."""

    role: Literal["centre", "expert", "annotator", "funder"]
    name: Text
    identifier: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="e.g. a ROR, ORCID or FINESS identifier, or its URL"
    )


class Link(_Strict):
    """A documentation page (rec. 4.7): protocol, data dictionary, acquisition notes…"""

    title: Text
    url: Url


class Retention(_Strict):
    """How long the data is kept: a number of years from publication, or a date."""

    years: Annotated[int, Field(ge=1, le=100)] | None = None
    until: dt.date | None = None

    @model_validator(mode="after")
    def _one(self) -> Retention:
        if (self.years is None) == (self.until is None):
            raise ValueError("give either years or until")
        return self


class DatasetDescription(_Strict):
    """What the data manager says about the project's dataset; the server adds the rest."""

    title: Annotated[str, Field(min_length=3, max_length=300)]
    description: Annotated[str, Field(min_length=10, max_length=10000)]
    purpose: Annotated[str, Field(min_length=3, max_length=5000)]
    legal_basis: Annotated[str, Field(min_length=2, max_length=500)] = Field(
        description="e.g. 'MR-004 (CNIL reference methodology)'"
    )
    legal_basis_url: Url | None = None
    keywords: Annotated[list[Text], Field(min_length=1, max_length=50)]
    themes: list[str] = Field(default_factory=lambda: ["HEAL"], max_length=14)
    health_categories: list[str] = Field(default_factory=lambda: ["EHRS"], max_length=20)
    hdab: Organisation = Field(default_factory=lambda: Organisation(**HDH))
    publisher: Organisation | None = Field(default=None, description="default: the site")
    custodian: Organisation | None = Field(default=None, description="default: the publisher")
    contact_point: ContactPoint
    producers: Annotated[list[Producer], Field(max_length=500)] = []
    documentation: Annotated[list[Link], Field(max_length=100)] = []
    retention: Retention | None = None
    language: Annotated[list[str], Field(max_length=24)] = []
    landing_page: Url | None = None
    access_rights: Literal["NON_PUBLIC"] = "NON_PUBLIC"

    @field_validator("themes")
    @classmethod
    def _themes(cls, value: list[str]) -> list[str]:
        codes = {v.strip().upper() for v in value}
        unknown = sorted(c for c in codes if c not in DATA_THEMES)
        if unknown:
            raise ValueError("unknown EU data theme; one of " + ", ".join(DATA_THEMES))
        return sorted(codes | {"HEAL"})  # a health dataset is always under HEAL

    @field_validator("health_categories")
    @classmethod
    def _categories(cls, value: list[str]) -> list[str]:
        codes = sorted({v.strip().upper() for v in value})
        if not codes or not all(_CODE.match(c) for c in codes):
            raise ValueError("expected codes of the HealthData@EU health categories, e.g. EHRS")
        return codes

    @field_validator("language")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        codes = []
        for item in value:
            code = item.strip()
            code = _TWO_LETTER.get(code.lower(), code.upper())
            if not re.fullmatch(r"[A-Z]{3}", code):
                raise ValueError("expected EU language codes, e.g. FRA or ENG (or fr, en)")
            if code not in codes:
                codes.append(code)
        return codes

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        unique: list[str] = []
        for keyword in value:
            if keyword.casefold() not in {k.casefold() for k in unique}:
                unique.append(keyword)
        return unique


def _where(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "description"


def validate_description(data: Any) -> DatasetDescription:
    """The description, or DescriptionError listing every problem (field path and reason)."""
    if not isinstance(data, dict):
        raise DescriptionError(["description: expected a JSON object"])
    try:
        return DatasetDescription.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            where = _where(tuple(error.get("loc", ())))
            if error.get("type") == "extra_forbidden":
                problems.append(f"{where}: unknown field")
                continue
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise DescriptionError(problems) from None


def read_description_file(path: Path) -> DatasetDescription:
    """A description from a `.json`, `.yaml` or `.yml` file (YAML needs PyYAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptionError([f"cannot read the file ({type(exc).__name__})"]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # an optional dependency: JSON always works
            raise DescriptionError(["YAML files need PyYAML (pip install pyyaml)"]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise DescriptionError([f"not valid YAML{where}"]) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DescriptionError([f"not valid JSON at line {exc.lineno}"]) from None
    return validate_description(data)
