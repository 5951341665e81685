"""Pseudonymization profiles: the PS3.15 table, the chosen options and a project's overrides.

Everything here is data from `mappings/pseudonymization/`; this module only compiles it into a
tag → rule lookup. How combined codes are resolved is written once, in `resolve_combined`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings" / "pseudonymization"
TABLE_FILE = "ps3.15-table-e.1-1-2024b.json"
TABLE_EDITION = "2024b"

# Our own actions, beyond the PS3.15 codes X Z D K C U:
#   pseudonym  : the patient's keyed pseudonym (PatientID, PatientName)
#   token      : a keyed token of the value, so equal values stay equal (accession, station, …)
#   birth-date : shifted with the patient's offset, or truncated to the year (profile setting)
ACTIONS = frozenset({"X", "Z", "D", "K", "C", "U", "pseudonym", "token", "birth-date"})


class ProfileError(ValueError):
    """A profile file or an option name is wrong; the message says which."""


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    source: str  # "basic", an option name, or "profile"
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    code: str
    meaning: str
    column: str | None


def resolve_combined(code: str, vr: str = "") -> str:
    """Resolve the Annex E combined codes without knowing the attribute's Type in each IOD.

    We take the choice that keeps the attribute: valid whatever its Type (a Type 3 attribute
    may be present) and the white paper's "replace rather than delete" (rec. 2.1).
    X/Z → Z; X/D, X/Z/D, Z/D → D; X/Z/U* → U (the reference sequence is kept, every UID in
    it remapped). A sequence under X/Z is kept too, its items cleaned by the table at every
    depth, like X/Z/U*: an emptied sequence breaks IODs whose modules want one item or more
    (ReferencedStudySequence in General Study, dciodvfy says), and the cleaned items hold no
    identity and no source UID.
    """
    if "/" not in code:
        return code
    parts = code.split("/")
    if "U*" in parts or (vr == "SQ" and parts == ["X", "Z"]):
        return "U"
    if "D" in parts:
        return "D"
    return "Z"


@cache
def load_options() -> dict[str, Option]:
    data = tomllib.loads((MAPPINGS_DIR / "options.toml").read_text())
    return {
        name: Option(name, str(v["code"]), v["meaning"], v.get("column"))
        for name, v in data.items()
    }


@cache
def _table_rows() -> tuple[dict, ...]:
    return tuple(json.loads((MAPPINGS_DIR / TABLE_FILE).read_text()))


def parse_tag(text: str) -> int:
    """'PatientName', '(0010,0010)' or '00100010' → 0x00100010."""
    cleaned = text.strip().strip("()").replace(",", "")
    if len(cleaned) == 8:
        try:
            return int(cleaned, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(text.strip())
    if tag is None:
        raise ProfileError(f"unknown attribute {text!r} in profile")
    return tag


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def describe_tag(tag: int) -> str:
    return keyword_for_tag(tag) or format_tag(tag)


@dataclass(frozen=True)
class Profile:
    """A compiled profile: which rule applies to each standard attribute, plus private policy."""

    name: str
    version: str
    options: tuple[Option, ...]
    birth_date: str
    rules: dict[int, Rule]
    repeating: dict[int, Rule]  # masked (gg00,eeee) → rule, for 50xx and 60xx groups
    private_keep: frozenset[tuple[int, str, int]] = field(default_factory=frozenset)
    safe_private_column: str = "K"

    @property
    def keeps_safe_private(self) -> bool:
        return any(o.name == "retain-safe-private" for o in self.options)

    @property
    def shifts_dates(self) -> bool:
        return any(o.name == "retain-longitudinal-modified-dates" for o in self.options)

    def rule_for(self, tag: int) -> Rule | None:
        rule = self.rules.get(tag)
        if rule is None and (tag >> 24) in (0x50, 0x60):
            rule = self.repeating.get(tag & 0xFF00FFFF) or self.repeating.get(tag & 0xFF000000)
        return rule

    def method_description(self, tool_version: str) -> list[str]:
        """DeidentificationMethod (0012,0063) values: each ≤ 64 characters (LO)."""
        return [
            f"imaging-depot {tool_version}",
            f"profile {self.name} v{self.version}",
            f"PS3.15 Table E.1-1 {TABLE_EDITION}",
        ]


def _vr_of_row(ident: str) -> str:
    try:
        return dictionary_VR(int(ident, 16))
    except (KeyError, ValueError):
        return ""


def _table_rules(options: tuple[Option, ...]) -> tuple[dict[int, Rule], dict[int, Rule]]:
    rules: dict[int, Rule] = {}
    repeating: dict[int, Rule] = {}
    for row in _table_rows():
        rule = Rule(resolve_combined(row["basicProfile"], _vr_of_row(row["id"])), "basic")
        option_actions = {o.name: row[o.column] for o in options if o.column and o.column in row}
        if option_actions:
            # Options override the Basic Profile. Where two options disagree (only C against K
            # happens in the table: calibration dates under Device Identity and Modified Dates)
            # the one that changes more wins: C.
            chosen = min(option_actions.items(), key=lambda kv: kv[1] != "C")
            rule = Rule(chosen[1], chosen[0])
        ident = row["id"]
        if ident.startswith("gggg"):
            continue  # private attributes: see app.pseudo.private
        if "x" in ident:
            mask = int(ident.replace("x", "0"), 16)
            repeating[mask] = rule
        else:
            rules[int(ident, 16)] = rule
    return rules, repeating


def _private_keep(data: dict) -> frozenset[tuple[int, str, int]]:
    keep = set()
    for entry in data.get("private", {}).get("keep", []):
        group = int(entry["group"], 16)
        for element in entry["elements"]:
            keep.add((group, entry["creator"].strip(), int(element, 16)))
    return frozenset(keep)


def compile_profile(data: dict, extra_options: tuple[str, ...] = ()) -> Profile:
    known = load_options()
    names = ["basic", *data.get("options", []), *extra_options]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ProfileError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(known)}")
    options = tuple(known[n] for n in dict.fromkeys(names))
    rules, repeating = _table_rules(options)
    for key, spec in data.get("attributes", {}).items():
        spec = {"action": spec} if isinstance(spec, str) else spec
        if spec["action"] not in ACTIONS:
            raise ProfileError(f"unknown action {spec['action']!r} for {key}")
        rules[parse_tag(key)] = Rule(spec["action"], "profile", spec.get("prefix", ""))
    birth_date = data.get("birth_date", "shift")
    if birth_date not in ("shift", "year"):
        raise ProfileError("birth_date must be 'shift' or 'year'")
    return Profile(
        name=data["name"],
        version=str(data.get("version", "1")),
        options=options,
        birth_date=birth_date,
        rules=rules,
        repeating=repeating,
        private_keep=_private_keep(data),
    )


def profile_names() -> list[str]:
    return sorted(p.stem for p in (MAPPINGS_DIR / "profiles").glob("*.toml"))


@cache
def load_profile(name: str, extra_options: tuple[str, ...] = ()) -> Profile:
    path = MAPPINGS_DIR / "profiles" / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(f"no profile named {name!r}; known: {', '.join(profile_names())}")
    return compile_profile(tomllib.loads(path.read_text()), extra_options)


@cache
def kept_uid_attributes() -> frozenset[int]:
    """Tags whose UID values name definitions (SOP classes, syntaxes) and are never mapped."""
    lines = (MAPPINGS_DIR / "uid-attributes-kept.txt").read_text().splitlines()
    return frozenset(parse_tag(x) for x in lines if x.strip() and not x.startswith("#"))
