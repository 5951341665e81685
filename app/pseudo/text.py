"""Free-text cleaning: remove the patient's own identifiers and obvious identifiers.

Runs on every text value kept in a header (descriptions, comments, SR TextValue), so the
common case, a short technical string with nothing to remove, costs one regex search and
returns the very same object. Rules follow FIELD-NOTES §2.8 (French identifiers).
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

_T = TypeVar("_T")
DateShift = Callable[[datetime.date], datetime.date]

NAME = "[NAME]"
ID = "[ID]"
DATE = "[DATE]"
NIR = "[NIR]"
PHONE = "[PHONE]"
EMAIL = "[EMAIL]"
ADDRESS = "[ADDRESS]"

# ---------------------------------------------------------------------------------------------
# Shared regex pieces

# Tokens: never start or stop next to a letter or digit ("_" counts as a separator, as in
# "DUPONT_JEAN"); names and ids also never start right after "[" so placeholders stay intact.
_WORD_START = r"(?<![^\W_])"
_WORD_END = r"(?![^\W_])"
# Numbers also refuse a neighbouring "digit." or "digit,": pieces of UIDs ("1.2.840.…") and
# decimals are never taken for a date, a phone number or a NIR.
_NUM_START = _WORD_START + r"(?<!\d[.,])"
_NUM_END = _WORD_END + r"(?![.,]\d)"
_HSPACE = r"[^\S\r\n]"  # whitespace that does not cross a line
_UPPER = "A-ZÀ-ÖØ-ÞŒŸ"
_LETTER = "A-Za-zÀ-ÖØ-öø-ÿŒœŸ"
_COMBINING = "[\u0300-\u036f]*"  # decomposed (NFD) accents following a base letter

# ---------------------------------------------------------------------------------------------
# Accent- and case-insensitive word patterns

_LIGATURES = {"oe": "œ", "ae": "æ", "ss": "ß"}
_LIGATURE_FOLD = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss"})


def _fold(text: str) -> str:
    """Accent-free, case-folded form: how two spellings of a name are compared."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURE_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _accent_classes() -> dict[str, str]:
    """Map each ASCII letter to a class of its accented forms ("e" -> "[eèéêë…]")."""
    variants: dict[str, set[str]] = defaultdict(set)
    for code in range(0xC0, 0x250):
        char = chr(code)
        base = unicodedata.normalize("NFD", char)[0]
        lower = char.lower()
        if base != char and base.isascii() and base.isalpha() and len(lower) == 1:
            variants[base.lower()].add(lower)
    return {base: f"[{base}{''.join(sorted(chars))}]" for base, chars in variants.items()}


_ACCENT_CLASSES = _accent_classes()


def _letter_pattern(char: str) -> str:
    if char == " ":
        return r"[\s-]*"  # "LE GALL" also written "Le-Gall", "LEGALL"
    accented = _ACCENT_CLASSES.get(char)
    return accented + _COMBINING if accented else re.escape(char)


def _loose_pattern(word: str) -> str:
    """Regex (to compile with IGNORECASE) matching `word` whatever its accents or ligatures."""
    folded = _fold(word)
    parts: list[str] = []
    i = 0
    while i < len(folded):
        pair = folded[i : i + 2]
        if pair in _LIGATURES:
            spelled = _letter_pattern(pair[0]) + _letter_pattern(pair[1])
            parts.append(f"(?:{spelled}|{_LIGATURES[pair]})")
            i += 2
        else:
            parts.append(_letter_pattern(folded[i]))
            i += 1
    return "".join(parts)


def _token_regex(alternatives: Iterable[str]) -> str:
    """Whole-token alternation; callers pass longest first so "Jean-Pierre" beats "Jean"."""
    return rf"(?<!\[){_WORD_START}(?:{'|'.join(alternatives)}){_WORD_END}"


# ---------------------------------------------------------------------------------------------
# Patient identifiers


@dataclass(frozen=True)
class PatientIdentifiers:
    """What the original header says about the patient, to hunt for in free text."""

    names: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    birth_dates: tuple[datetime.date, ...] = ()

    @classmethod
    def from_header(
        cls, person_names: Iterable[str], ids: Iterable[str], birth_dates: Iterable[str]
    ) -> PatientIdentifiers:
        """Build from raw header values: PN strings, id strings, DA strings (YYYYMMDD).

        A bare string is taken as one value, not as characters: iterating "DUPONT^Jean"
        would silently yield no name at all.
        """
        return cls(
            names=_unique(part for pn in _values(person_names) for part in _name_parts(pn)),
            ids=_unique(value.strip() for value in _values(ids) if value.strip()),
            birth_dates=_unique(d for d in map(_parse_da, _values(birth_dates)) if d),
        )


def _values(values: Iterable[object] | str | None) -> list[str]:
    """Header values as strings (pydicom PersonName included), None and empty ones dropped."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [str(value) for value in values if value is not None and str(value)]


def _name_parts(person_name: str) -> list[str]:
    """Components of a PN value: split on ^ (components), = (groups), \\ (values), spaces."""
    parts = (part.strip(".,;:()\"'") for part in re.split(r"[\^=\\\s]+", person_name))
    return [part for part in parts if len(part) >= 2]


def _parse_da(value: str) -> datetime.date | None:
    value = value.strip()
    if not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


# Particles are name parts but also ordinary words ("examen de contrôle"): searched only
# together with the name they introduce.
_PARTICLES = frozenset({"al", "ben", "bin", "da", "das", "de", "del", "della", "den", "der"})
_PARTICLES |= {"des", "di", "do", "dos", "du", "el", "la", "le", "les", "st", "ter", "van", "von"}
# Small ids collide with series numbers, kVp, slice counts ("StudyID 1" vs "Series 1").
_MIN_ID_LENGTH = 3
_MIN_NUMERIC_ID_LENGTH = 4


def _searchable_names(names: tuple[str, ...]) -> list[str]:
    """Name parts worth a search, longest first.

    Hyphen pieces are added ("Jean-Pierre" -> also "Jean"); particles only with the part they
    introduce ("LE", "GALL" -> "LE GALL", never "le" alone).
    """
    found: dict[str, str] = {}
    for index, name in enumerate(names):
        candidates = [name, *name.split("-"), *_particle_phrases(names, index)]
        for candidate in candidates:
            folded = _fold(candidate)
            if len(folded) >= 2 and folded not in _PARTICLES:
                found.setdefault(folded, candidate)
    return sorted(found.values(), key=lambda candidate: -len(_fold(candidate)))


def _particle_phrases(names: tuple[str, ...], index: int) -> list[str]:
    """Phrases ending at names[index] and starting on each particle just before it."""
    if _fold(names[index]) in _PARTICLES:
        return []
    phrases = []
    start = index
    while start > 0 and _fold(names[start - 1]) in _PARTICLES:
        start -= 1
        phrases.append(" ".join(names[start : index + 1]))
    return phrases


def _searchable_ids(ids: Iterable[str]) -> list[str]:
    kept = {value for value in ids if len(value) >= _min_id_length(value)}
    return sorted(kept, key=lambda value: -len(value))


def _min_id_length(value: str) -> int:
    return _MIN_NUMERIC_ID_LENGTH if value.isdigit() else _MIN_ID_LENGTH


@dataclass(frozen=True)
class _PatientPatterns:
    names: re.Pattern[str] | None
    ids: re.Pattern[str] | None


@lru_cache(maxsize=1024)
def _patient_patterns(names: tuple[str, ...], ids: tuple[str, ...]) -> _PatientPatterns:
    """Compiled once per patient, and only when a text may mention the patient.

    Compiling the accent classes costs several milliseconds a patient, more than cleaning all
    of a study's text, which mostly never names the patient.
    """
    name_alternatives = [_loose_pattern(name) for name in _searchable_names(names)]
    id_alternatives = [re.escape(value) for value in _searchable_ids(ids)]
    return _PatientPatterns(
        names=_compiled_tokens(name_alternatives),
        ids=_compiled_tokens(id_alternatives),
    )


def _compiled_tokens(alternatives: list[str]) -> re.Pattern[str] | None:
    return re.compile(_token_regex(alternatives), re.IGNORECASE) if alternatives else None


# The regex machinery takes "ı" for "i" when ignoring case; casefold() does not.
_SQUASH_FIXES = str.maketrans({"ı": "i"})
# What a name pattern skips or absorbs: spaces and hyphens, decomposed accents (whatever their
# combining class: U+034F has none but is in the pattern's accent range).
_SQUASHED_OUT = re.compile(r"[\s\-\u0300-\u036f]+")


def _squash(text: str) -> str:
    """Folded, without spaces, hyphens and accents.

    Whatever a name or id pattern above matches squashes to that name's or id's own squashed
    form (tests check every code point), and squashing is done character by character, so a
    text whose squashed form does not contain it cannot match: no need to compile.
    """
    return _squash_folded(_fold(text))


def _squash_folded(folded: str) -> str:
    return _SQUASHED_OUT.sub("", folded.translate(_SQUASH_FIXES))


@lru_cache(maxsize=1024)
def _patient_keys(names: tuple[str, ...], ids: tuple[str, ...]) -> tuple[str, ...] | None:
    """Squashed names and ids to look for before compiling; None: always compile.

    Only ASCII keys are used: the guarantee above is checked for the characters they can hold.
    Name patterns are built from the folded name, id patterns from the id as written.
    """
    searched_ids = _searchable_ids(ids)
    if not all(value.isascii() for value in searched_ids):
        return None
    keys = [_squash_folded(_fold(name)) for name in _searchable_names(names)]
    keys += [_squash(value) for value in searched_ids]
    return tuple(keys) if all(key and key.isascii() for key in keys) else None


# ---------------------------------------------------------------------------------------------
# Generic identifiers

# Starts only at the start of a token: a long run of letters is scanned once, not once per letter.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")

_NIR_SPACE = "[ \u00a0]?"
_NIR = re.compile(
    _NUM_START
    + rf"(?P<body>[1-478]{_NIR_SPACE}\d\d{_NIR_SPACE}"
    + rf"(?:0[1-9]|1[0-2]|[23]\d|4[0-2]|[5-9]\d){_NIR_SPACE}"  # month; 20-42, 50+: unknown
    + rf"(?:(?:\d\d|2[AB]){_NIR_SPACE}\d{{3}}|9[78]\d{_NIR_SPACE}\d\d){_NIR_SPACE}"  # dept+commune
    + rf"\d{{3}}){_NIR_SPACE}(?P<key>\d\d)"
    + _NUM_END,
    re.IGNORECASE,
)


def _nir_key_ok(match: re.Match[str]) -> bool:
    """Key = 97 - (13 digits mod 97), Corsica 2A/2B counted as 19/18."""
    digits = re.sub(r"\s", "", match["body"]).upper().replace("2A", "19").replace("2B", "18")
    return 97 - int(digits) % 97 == int(match["key"])


def _replace_nir(match: re.Match[str]) -> str:
    return NIR if _nir_key_ok(match) else match.group(0)


_PHONE = re.compile(
    _NUM_START + r"(?:(?:\+|00)33[ .-]?(?:\(0\)[ .-]?)?[1-9]|0[1-9])(?:[ .-]?\d\d){4}" + _NUM_END
)

_STREET_TYPES = r"rue|avenue|av\.|boulevard|bd|place|all[ée]e|impasse|chemin|quai|route|square"
_STREET = re.compile(
    _NUM_START
    + rf"\d{{1,4}}(?:{_HSPACE}?(?:bis|ter|[a-d]))?,?{_HSPACE}+"
    + rf"(?:{_STREET_TYPES})(?:(?<=\.)|{_WORD_END})"
    + r"(?:[^,;\r\n]*[^\s,;])?",  # the rest of the street, up to a comma or the end
    re.IGNORECASE,
)
# Units that could follow a 5-digit number and look like a capitalized city.
_UNITS = r"(?:[kMG]?Hz|[mµ]?Gy|[mµ]?Sv|[kMG]?Bq|[kM]?Pa|HU|Ci)"
_POSTCODE = re.compile(
    _NUM_START
    + rf"(?:0[1-9]|[1-8]\d|9[0-8])\d{{3}}{_HSPACE}+(?!{_UNITS}{_WORD_END})"
    + rf"[{_UPPER}][{_LETTER}]+(?:['’-][{_LETTER}]+)*{_WORD_END}"
)

# Titles: case-sensitive where the upper-case form is a DICOM modality (MR, DR, PR).
_TITLE_TOKEN = (
    r"(?-i:(?<![^\W_])(?:(?:Dr|Pr|Mr|Mrs|Ms)\.?|M\.|Mme|MME|Mlle|MLLE)"
    r"|(?i:(?<![^\W_])(?:docteur|professeur|monsieur|madame|mademoiselle)))"
)
_NAME_WORD = rf"(?:[{_UPPER}]\.|[{_UPPER}][{_LETTER}]*(?:['’-][{_LETTER}]+)*)"
_TITLED_NAME = re.compile(
    rf"(?P<title>{_TITLE_TOKEN})(?P<gap>{_HSPACE}+)"
    + rf"{_NAME_WORD}(?:{_HSPACE}{_NAME_WORD}){{0,2}}{_WORD_END}"
)


# Every generic rule needs a digit, an "@" or a title; the patient's own tokens may not.
_GENERIC_QUICK = re.compile(rf"[\d@]|{_TITLE_TOKEN}", re.IGNORECASE)


def _replace_titled_name(match: re.Match[str]) -> str:
    return match["title"] + match["gap"] + NAME


# ---------------------------------------------------------------------------------------------
# Dates

_FRENCH_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août")
_FRENCH_MONTHS += ("septembre", "octobre", "novembre", "décembre")
_ENGLISH_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")
_ENGLISH_MONTHS += ("September", "October", "November", "December")
# folded month name -> (month number, language)
_MONTHS: dict[str, tuple[int, str]] = {
    _fold(name): (number, language)
    for language, names in (("fr", _FRENCH_MONTHS), ("en", _ENGLISH_MONTHS))
    for number, name in enumerate(names, start=1)
}


def _month_regex(names: Iterable[str]) -> str:
    return "|".join(_loose_pattern(name) for name in sorted(names, key=len, reverse=True))


_ANY_MONTH = _month_regex(_FRENCH_MONTHS + _ENGLISH_MONTHS)
_DAY = r"(?P<d>\d{1,2})(?P<suf>(?i:er|st|nd|rd|th)|)"  # "suf" always takes part, maybe empty
_YEAR = r"(?P<y>\d{4})"

# Dates written with separators may touch letters ("2024-03-12T10:00", "DDN:12/03/1984");
# a bare 8-digit date must stand alone as a token.
_DIGITS_START = r"(?<!\d)(?<!\d[.,])"
_DIGITS_END = r"(?!\d)(?![.,]\d)"
# Every date pattern needs a 4-digit year, and digits either side of a separator, eight digits
# in a row, or a digit some non-digits before the year: text without both skips them all.
_FOUR_DIGITS = re.compile(r"\d{4}")
_DATE_SHAPES = re.compile(r"\d[-/.]\d|\d{8}|\d\D+\d{4}")


@lru_cache(maxsize=1)
def _date_patterns() -> tuple[re.Pattern[str], ...]:
    """Compiled on first need: the month names' accent classes take ~35 ms, a tenth of a
    batch's start-up, and most batches' text holds no date at all."""
    return tuple(
        re.compile(pattern)
        for pattern in (
            # 12 janvier 2024, 1er mars 2024, 3 March 2024
            rf"{_DIGITS_START}{_DAY}{_HSPACE}+(?P<month>(?i:{_ANY_MONTH})){_HSPACE}+{_YEAR}"
            + _DIGITS_END,
            # March 3, 2024
            rf"{_WORD_START}(?P<month>(?i:{_month_regex(_ENGLISH_MONTHS)})){_HSPACE}+{_DAY},?"
            + rf"{_HSPACE}+{_YEAR}{_DIGITS_END}",
            # 2024-03-12
            rf"{_DIGITS_START}(?P<y>\d{{4}})(?P<sep>[-/.])(?P<m>\d{{1,2}})(?P=sep)(?P<d>\d{{1,2}})"
            + _DIGITS_END,
            # 12/03/2024, 12-03-2024, 12.03.2024
            rf"{_DIGITS_START}(?P<d>\d{{1,2}})(?P<sep>[/.-])(?P<m>\d{{1,2}})(?P=sep)(?P<y>\d{{4}})"
            + _DIGITS_END,
            # 20240312 (DICOM DA), only 1900-2100: other 8-digit numbers are not dates
            rf"{_NUM_START}(?P<y>19\d\d|20\d\d|2100)(?P<m>\d\d)(?P<d>\d\d){_NUM_END}",
        )
    )


def _read_date(match: re.Match[str]) -> datetime.date | None:
    groups = match.groupdict()
    month = int(groups["m"]) if "m" in groups else _MONTHS[_fold(groups["month"])][0]
    try:
        return datetime.date(int(groups["y"]), month, int(groups["d"]))
    except ValueError:
        return None


def _write_date(match: re.Match[str], value: datetime.date) -> str:
    """The match rewritten with `value`, keeping separators, padding, language and case."""
    groups = match.groupdict()
    fields = {"y": f"{value.year:04d}", "d": _padded(groups["d"], value.day)}
    if "m" in groups:
        fields["m"] = _padded(groups["m"], value.month)
    if "month" in groups:
        fields["month"] = _month_name(groups["month"], value.month)
        fields["suf"] = _day_suffix(match, value.day)
    return _replace_groups(match, fields)


def _padded(original: str, number: int) -> str:
    return f"{number:0{len(original)}d}"


def _month_name(original: str, month: int) -> str:
    """Same language and case; unaccented if the original dropped its accents ("fevrier")."""
    number, language = _MONTHS[_fold(original)]
    names = _FRENCH_MONTHS if language == "fr" else _ENGLISH_MONTHS
    written_plain = _fold(original) == original.lower()
    if written_plain and _fold(names[number - 1]) != names[number - 1].lower():
        return _styled(_fold(names[month - 1]), original)
    return _styled(names[month - 1], original)


def _styled(word: str, model: str) -> str:
    if model.isupper():
        return word.upper()
    if model[:1].isupper():
        return word[:1].upper() + word[1:].lower()
    return word.lower()


def _day_suffix(match: re.Match[str], day: int) -> str:
    """French "1er" for the first of the month; English ordinals only if the text had one."""
    original, month = match["suf"], match["month"]
    if _MONTHS[_fold(month)][1] == "fr":
        wanted = day == 1 and (bool(original) or int(match["d"]) != 1)
        suffix = "er" if wanted else ""
    elif original:
        suffix = _english_ordinal(day)
    else:
        suffix = ""
    return suffix.upper() if original.isupper() or month.isupper() else suffix


def _english_ordinal(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _replace_groups(match: re.Match[str], fields: dict[str, str]) -> str:
    """Rebuild the matched text with some named groups replaced."""
    text, start = match.group(0), match.start()
    pieces: list[str] = []
    position = 0
    for name in sorted(fields, key=lambda group: match.start(group)):
        group_start, group_end = match.span(name)
        pieces += [text[position : group_start - start], fields[name]]
        position = group_end - start
    pieces.append(text[position:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------
# The cleaner


class TextCleaner:
    """Cleans the free text of one patient's files; per-patient patterns are cached."""

    def __init__(self, patient: PatientIdentifiers, shift_date: DateShift | None = None) -> None:
        self._shift_date = shift_date
        self._birth_dates = frozenset(patient.birth_dates)
        self._names, self._ids = patient.names, patient.ids
        self._keys = _patient_keys(patient.names, patient.ids)
        # Order matters: whole e-mails before their name parts, titles before the patient's
        # names so "Mme DUPONT Jeanne" loses both words, ids before numbers that contain them.
        self._steps: tuple[Callable[[str], str], ...] = (
            lambda text: _EMAIL.sub(EMAIL, text),
            self._replace_ids,
            lambda text: _NIR.sub(_replace_nir, text),
            lambda text: _PHONE.sub(PHONE, text),
            self._replace_dates,
            lambda text: _STREET.sub(ADDRESS, text),
            lambda text: _POSTCODE.sub(ADDRESS, text),
            lambda text: _TITLED_NAME.sub(_replace_titled_name, text),
            self._replace_names,
        )

    def clean(self, text: str) -> str:
        """Return text with identifiers replaced; the same object when nothing was found."""
        if not text or not (_GENERIC_QUICK.search(text) or self._may_name_patient(text)):
            return text
        cleaned = text
        for step in self._steps:
            cleaned = step(cleaned)
        return text if cleaned == text else cleaned

    def _may_name_patient(self, text: str) -> bool:
        """False only when no name or id pattern of the patient can match `text`."""
        if self._keys is None:
            return bool(self._names or self._ids)
        if not self._keys:
            return False
        squashed = _squash(text)
        return any(key in squashed for key in self._keys)

    def _patterns(self, text: str) -> _PatientPatterns | None:
        return _patient_patterns(self._names, self._ids) if self._may_name_patient(text) else None

    def _replace_ids(self, text: str) -> str:
        patterns = self._patterns(text)
        return patterns.ids.sub(ID, text) if patterns and patterns.ids else text

    def _replace_names(self, text: str) -> str:
        patterns = self._patterns(text)
        return patterns.names.sub(NAME, text) if patterns and patterns.names else text

    def _replace_dates(self, text: str) -> str:
        if not (_FOUR_DIGITS.search(text) and _DATE_SHAPES.search(text)):
            return text
        for pattern in _date_patterns():
            text = pattern.sub(self._date_replacement, text)
        return text

    def _date_replacement(self, match: re.Match[str]) -> str:
        """Birth dates are identifiers: removed, never shifted. Invalid dates stay as text."""
        value = _read_date(match)
        if value is None:
            return match.group(0)
        if value in self._birth_dates or self._shift_date is None:
            return DATE
        try:
            shifted = self._shift_date(value)
        except (OverflowError, ValueError):
            return DATE
        return _write_date(match, shifted)
