"""Free-text cleaning (app.pseudo.text): patient identifiers, French identifiers, dates.

NIRs below are synthetic; their keys were computed by hand as 97 - (13 digits mod 97).
"""

from __future__ import annotations

import datetime
import re

import pytest

from app.pseudo import text
from app.pseudo.text import PatientIdentifiers, TextCleaner

DUPONT = PatientIdentifiers.from_header(
    person_names=["DUPONT^Hélène Marie", "LE GALL^Jean-Pierre"],
    ids=["8001234567", " ACC-2024-77 ", ""],
    birth_dates=["19840312"],
)


def shift_by(days: int):
    def shift(value: datetime.date) -> datetime.date:
        return value + datetime.timedelta(days=days)

    return shift


@pytest.fixture
def cleaner() -> TextCleaner:
    return TextCleaner(PatientIdentifiers())


@pytest.fixture
def patient_cleaner() -> TextCleaner:
    return TextCleaner(DUPONT)


# --- PatientIdentifiers.from_header ----------------------------------------------------------


def test_from_header_splits_person_names_and_drops_short_parts() -> None:
    patient = PatientIdentifiers.from_header(["DUPONT^Jean Pierre^^M.", "Dupont=杜邦^J"], [], [])
    assert patient.names == ("DUPONT", "Jean", "Pierre", "Dupont", "杜邦")


def test_from_header_strips_ids_and_drops_empty_ones() -> None:
    patient = PatientIdentifiers.from_header([], [" 123456 ", "", "   ", "ACC9"], [])
    assert patient.ids == ("123456", "ACC9")


def test_from_header_keeps_valid_birth_dates_only() -> None:
    patient = PatientIdentifiers.from_header([], [], ["19840312", "19840231", "1984", "", "x"])
    assert patient.birth_dates == (datetime.date(1984, 3, 12),)


def test_from_header_takes_a_bare_string_as_one_value() -> None:
    # Iterating "DUPONT^Jean" would give one-letter parts, all dropped: no name searched.
    patient = PatientIdentifiers.from_header("DUPONT^Jean", "123456", "19840312")
    assert patient.names == ("DUPONT", "Jean")
    assert patient.ids == ("123456",)
    assert patient.birth_dates == (datetime.date(1984, 3, 12),)


# --- fast path and technical text ------------------------------------------------------------

TECHNICAL = [
    "T1 MPRAGE 1.0mm",
    "CT THORAX 5.0 B30f",
    "Series 3",
    "1.2.840.10008.5.1.4.1.1.2",
    "120 kVp",
    "SIEMENS",
    "Dose 12.5 mGy",
    "MR BRAIN W/O CONTRAST",
    "DR CHEST PA",
    "ep2d_diff_3scan_trace 2.5 mm",
    "1.2.840.113619.2.55.3.604688119.971.20240312.1",
    "Examen de contrôle, séquence 3D",
    "Activité 370 MBq, 10000 Hz",
]


@pytest.mark.parametrize("text", TECHNICAL)
def test_technical_text_comes_back_as_the_same_object(text: str) -> None:
    cleaner = TextCleaner(DUPONT, shift_by(-10))
    assert cleaner.clean(text) is text


def test_fast_path_returns_the_same_object(patient_cleaner: TextCleaner) -> None:
    text = "".join(["CHEST ", "PA"])  # built at run time: not an interned literal
    assert patient_cleaner.clean(text) is text
    assert patient_cleaner.clean("") == ""


def test_fast_path_runs_no_rule(patient_cleaner: TextCleaner) -> None:
    def fail(text: str) -> str:
        raise AssertionError("a rule ran on text with nothing suspicious")

    patient_cleaner._steps = (fail,)
    text = "CHEST PA W/O CONTRAST"
    assert patient_cleaner.clean(text) is text
    with pytest.raises(AssertionError):
        patient_cleaner.clean("Series 3")  # a digit: the rules do run


def test_same_object_even_when_a_rule_was_tried(patient_cleaner: TextCleaner) -> None:
    text = "".join(["Wrong key 18412751234564", "1"])
    assert patient_cleaner.clean(text) is text


def test_patterns_are_compiled_once_per_patient() -> None:
    text._patient_patterns.cache_clear()
    first, second = TextCleaner(DUPONT), TextCleaner(DUPONT, shift_by(3))
    assert first.clean("vu par DUPONT") == second.clean("vu par DUPONT") == "vu par [NAME]"
    assert text._patient_patterns.cache_info().misses == 1


def test_text_that_cannot_name_the_patient_compiles_nothing() -> None:
    text._patient_patterns.cache_clear()
    cleaner = TextCleaner(DUPONT)
    for value in ("CT THORAX 5mm", "Serie 2 du 12/03/2024", "Dr Martin", "DUPOND 2"):
        cleaner.clean(value)
    assert text._patient_patterns.cache_info().currsize == 0
    assert cleaner.clean("HE\u034fLENE") == "[NAME]"  # one of the pattern's accent marks
    assert text._patient_patterns.cache_info().currsize == 1


def test_non_ascii_ids_are_always_searched_with_the_full_pattern() -> None:
    cleaner = TextCleaner(PatientIdentifiers.from_header([], ["IPPé77"], []))
    assert cleaner._keys is None
    assert cleaner.clean("dossier ippÉ77") == "dossier [ID]"


def _every_code_point() -> str:
    return "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000)


def test_whatever_a_pattern_piece_matches_squashes_to_that_piece() -> None:
    """The guarantee that lets a cleaner skip compiling, checked on every code point.

    A name or id pattern is a sequence of pieces, one per character of the folded name or of
    the id (both ASCII when the shortcut is used) or per ligature; each piece's match must
    squash to what the character squashes to, or `_squash(text)` could miss a real match.
    """
    every = _every_code_point()
    pieces = {char: text._letter_pattern(char) for char in map(chr, range(0x20, 0x7F))}
    pieces |= {char: re.escape(char) for char in map(chr, range(0x20, 0x7F))}  # id pieces
    pieces |= {pair: text._loose_pattern(pair) for pair in text._LIGATURES}
    pieces["ı"] = text._letter_pattern("ı")  # the one non-ASCII letter that folds to "i"
    for char, piece in pieces.items():
        expected = text._squash_folded(char.lower())
        for match in re.finditer(piece, every, re.IGNORECASE):
            assert text._squash(match.group()) == expected, (char, match.group())
    assert text._squash("\u0301\u034f \t-") == ""


@pytest.mark.parametrize(
    "value", ["HE\u034fLENE", "Hélène", "dupont", "DUPONT_HELENE", "Kıſſ", "acc 2024 77"]
)
def test_squashed_text_contains_what_the_full_pattern_finds(value: str) -> None:
    patient = PatientIdentifiers.from_header(["DUPONT^Hélène", "KISS"], ["ACC-2024-77"], [])
    patterns = text._patient_patterns(patient.names, patient.ids)
    keys = text._patient_keys(patient.names, patient.ids)
    found = [m for p in (patterns.names, patterns.ids) if p for m in p.finditer(value)]
    squashed = text._squash(value)
    for match in found:
        assert any(key in squashed and key == text._squash(match.group()) for key in keys)


# --- patient names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient DUPONT", "Patient [NAME]"),
        ("patient dupont helene", "patient [NAME] [NAME]"),  # case and accents from header
        ("HELENE", "[NAME]"),
        ("Héléne", "[NAME]"),  # another accent on the same letter
        ("He\u0301le\u0300ne", "[NAME]"),  # decomposed accents
        ("DUPONT_HELENE", "[NAME]_[NAME]"),
        ("Jean-Pierre", "[NAME]"),
        ("Jean Pierre", "[NAME] [NAME]"),  # hyphen pieces searched too
        ("vu par Le Gall", "vu par [NAME]"),
        ("LEGALL", "[NAME]"),
    ],
)
def test_patient_name_parts_are_replaced(
    patient_cleaner: TextCleaner, text: str, expected: str
) -> None:
    assert patient_cleaner.clean(text) == expected


def test_unaccented_header_matches_accented_text() -> None:
    cleaner = TextCleaner(PatientIdentifiers.from_header(["LEFEVRE^Helene"], [], []))
    assert cleaner.clean("Mme Lefèvre, Hélène") == "Mme [NAME], [NAME]"


def test_particles_are_searched_only_with_their_name() -> None:
    cleaner = TextCleaner(PatientIdentifiers.from_header(["DE LA FONTAINE^Jean"], [], []))
    assert cleaner.clean("examen de la hanche") == "examen de la hanche"
    assert cleaner.clean("M. de La Fontaine") == "M. [NAME]"
    assert cleaner.clean("Delafontaine") == "[NAME]"


def test_placeholders_survive_a_patient_called_name() -> None:
    # Phantoms and test patients are often "TEST^NAME".
    cleaner = TextCleaner(PatientIdentifiers.from_header(["TEST^NAME"], [], []))
    assert cleaner.clean("Dr Martin, name test") == "Dr [NAME], [NAME] [NAME]"


def test_ligature_matches_spelled_out_form() -> None:
    cleaner = TextCleaner(PatientIdentifiers.from_header(["COEUR^Anne"], [], []))
    assert cleaner.clean("famille Cœur") == "famille [NAME]"


@pytest.mark.parametrize(
    "text",
    [
        "DUPONTEL",  # longer word
        "DUPONT2",  # glued to a digit
        "examen de la hanche",  # "LE" is a particle: searched only with "GALL"
        "le gallium",
        "Marieville",
    ],
)
def test_name_parts_only_match_whole_tokens(patient_cleaner: TextCleaner, text: str) -> None:
    assert patient_cleaner.clean(text) is text


# --- patient ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IPP 8001234567", "IPP [ID]"),
        ("accession acc-2024-77.", "accession [ID]."),
        ("(8001234567)", "([ID])"),
    ],
)
def test_patient_ids_are_replaced(patient_cleaner: TextCleaner, text: str, expected: str) -> None:
    assert patient_cleaner.clean(text) == expected


@pytest.mark.parametrize("text", ["18001234567", "8001234567890", "XACC-2024-77"])
def test_patient_ids_inside_longer_tokens_are_kept(patient_cleaner: TextCleaner, text: str) -> None:
    assert patient_cleaner.clean(text) is text


def test_very_short_ids_are_not_searched() -> None:
    # StudyID "1" would otherwise wipe every "Series 1".
    cleaner = TextCleaner(PatientIdentifiers.from_header([], ["1", "42", "AB"], []))
    text = "Series 1, 42 images, AB plane"
    assert cleaner.clean(text) is text


# --- birth dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "12/03/1984",
        "12-03-1984",
        "12.3.1984",
        "1984-03-12",
        "19840312",
        "12 mars 1984",
        "March 12, 1984",
    ],
)
def test_birth_date_is_removed_never_shifted(text: str) -> None:
    cleaner = TextCleaner(DUPONT, shift_by(-10))
    assert cleaner.clean(f"né le {text}") == "né le [DATE]"


# --- NIR -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nir",
    [
        "184127512345640",
        "1 84 12 75 123 456 40",
        "2 69 02 99 341 732 85",
        "1 85 01 2A 012 345 15",  # Corsica: key computed with 19
        "185012B01234542",  # Corsica: key computed with 18
        "2 96 03 971 12 345 75",  # overseas: 3-digit department
    ],
)
def test_nir_with_valid_key_is_replaced(cleaner: TextCleaner, nir: str) -> None:
    assert cleaner.clean(f"NIR {nir}.") == "NIR [NIR]."


@pytest.mark.parametrize(
    "number",
    [
        "184127512345641",  # wrong key
        "1 84 12 75 123 456 41",  # wrong key, spaced
        "1 85 01 2A 012 345 16",  # wrong key, Corsica
        "185012001234515",  # the 2A key with department 20: does not check
        "584127512345634",  # key checks, but sex digit 5 does not exist
        "184137512345656",  # key checks, but month 13 does not exist
        "184437512345651",  # key checks, but month 43 does not exist
        "184007512345642",  # key checks, but month 00 does not exist
    ],
)
def test_unchecked_nir_like_numbers_are_kept(cleaner: TextCleaner, number: str) -> None:
    text = f"N {number}"
    assert cleaner.clean(text) is text


# --- phones, e-mails -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "0123456789",
        "01 23 45 67 89",
        "06.12.34.56.78",
        "06-12-34-56-78",
        "+33 1 23 45 67 89",
        "+33 (0)1 23 45 67 89",
        "+33612345678",
        "0033 6 12 34 56 78",
    ],
)
def test_french_phone_numbers_are_replaced(cleaner: TextCleaner, phone: str) -> None:
    assert cleaner.clean(f"tel: {phone}, poste") == "tel: [PHONE], poste"


@pytest.mark.parametrize("text", ["01 23 45 67", "00 12 34 56 78", "0123456789012"])
def test_phone_like_numbers_are_kept(cleaner: TextCleaner, text: str) -> None:
    assert cleaner.clean(text) is text


def test_email_is_replaced_whole(patient_cleaner: TextCleaner) -> None:
    text = "écrire à helene.dupont+irm@chu-exemple.fr ou x_y@lab.example.org"
    assert patient_cleaner.clean(text) == "écrire à [EMAIL] ou [EMAIL]"


# --- names after titles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("demandé par Dr Martin", "demandé par Dr [NAME]"),
        ("Dr. HOUSE Gregory", "Dr. [NAME]"),
        ("Pr Durand-Lévy, chef", "Pr [NAME], chef"),
        ("Professeur Bernard", "Professeur [NAME]"),
        ("DOCTEUR MOREAU", "DOCTEUR [NAME]"),
        ("M. Petit", "M. [NAME]"),
        ("Mme Lefèvre Anne Sophie Claire", "Mme [NAME] Claire"),  # at most three words
        ("Mlle Roux", "Mlle [NAME]"),
        ("Monsieur Bonnet", "Monsieur [NAME]"),
        ("madame Garnier", "madame [NAME]"),
        ("Mr Smith", "Mr [NAME]"),
        ("Mrs Jones", "Mrs [NAME]"),
        ("Ms O'Brien", "Ms [NAME]"),
        ("Dr J. Watson", "Dr [NAME]"),
        ("Mme DUPONT Jeanne", "Mme [NAME]"),  # patient name and a new one, both gone
    ],
)
def test_names_after_titles_are_replaced(
    patient_cleaner: TextCleaner, text: str, expected: str
) -> None:
    assert patient_cleaner.clean(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "MR HEAD",  # modality, not Mr
        "DR CHEST",
        "PR SERIES",
        "Dr absent",  # lower-case word after the title
        "Drain Pleural",
        "EMME Test",
    ],
)
def test_title_lookalikes_are_kept(cleaner: TextCleaner, text: str) -> None:
    assert cleaner.clean(text) is text


# --- dates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "expected"),
    [
        ("Examen du 03/02/2024", -10, "Examen du 24/01/2024"),
        ("Examen du 3/2/2024", -10, "Examen du 24/1/2024"),
        ("le 03-02-2024", 1, "le 04-02-2024"),
        ("le 03.02.2024.", 30, "le 04.03.2024."),
        ("2024-03-01T10:00", -1, "2024-02-29T10:00"),
        ("DA 20240301", -1, "DA 20240229"),
        ("le 1er mars 2024", -1, "le 29 février 2024"),
        ("le 2 mars 2024", -1, "le 1er mars 2024"),
        ("le 1er mars 2024", 1, "le 2 mars 2024"),
        ("le 12 janvier 2024", 30, "le 11 février 2024"),
        ("le 12 fevrier 2024", 30, "le 13 mars 2024"),
        ("le 5 aout 2024", 120, "le 3 decembre 2024"),  # written without accents: kept so
        ("le 12 mars 2024", -30, "le 11 février 2024"),
        ("LE 5 AOUT 2024", 30, "LE 4 SEPTEMBRE 2024"),
        ("le 5 Août 2024", -30, "le 6 Juillet 2024"),
        ("March 3, 2024", -10, "February 22, 2024"),
        ("3 March 2024", -10, "22 February 2024"),
        ("March 3rd, 2024", -1, "March 2nd, 2024"),
        ("du 03/02/2024 au 05/02/2024", -10, "du 24/01/2024 au 26/01/2024"),
        ("03/02/2024-05/02/2024", 1, "04/02/2024-06/02/2024"),
    ],
)
def test_dates_are_shifted_in_the_same_format(text: str, days: int, expected: str) -> None:
    assert TextCleaner(PatientIdentifiers(), shift_by(days)).clean(text) == expected


@pytest.mark.parametrize(
    "text",
    ["03/02/2024", "2024-02-03", "20240203", "3 février 2024", "1er mars 2024", "March 3, 2024"],
)
def test_dates_without_shift_become_placeholders(cleaner: TextCleaner, text: str) -> None:
    assert cleaner.clean(f"le {text}.") == "le [DATE]."


@pytest.mark.parametrize(
    "text",
    [
        "31/02/2024",  # no such day
        "12/13/2024",  # no such month
        "30 février 2024",
        "2024-02-30",
        "18991231",  # compact form: only 1900-2100
        "20241301",
        "x20240312",  # compact form must stand alone
        "202403120",
        "1.2.3.20240312",  # UID component
        "1.2.840.1.12.03.2024",
    ],
)
def test_non_dates_are_kept(text: str) -> None:
    assert TextCleaner(PatientIdentifiers(), shift_by(5)).clean(text) is text


def test_date_patterns_wait_for_a_text_with_a_year() -> None:
    text._date_patterns.cache_clear()
    cleaner = TextCleaner(PatientIdentifiers(), shift_by(1))
    for value in ("5/5mm Plain, serie 12/03", "121327", "Protocole 2024"):
        assert cleaner.clean(value) == value
    assert text._date_patterns.cache_info().currsize == 0
    assert cleaner.clean("vu le 12/03/2024") == "vu le 13/03/2024"
    assert text._date_patterns.cache_info().currsize == 1


def test_a_failing_shift_falls_back_to_a_placeholder() -> None:
    def overflow(value: datetime.date) -> datetime.date:
        return value + datetime.timedelta(days=10**7)

    assert TextCleaner(PatientIdentifiers(), overflow).clean("le 03/02/2024") == "le [DATE]"


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12 rue de la Paix, Paris", "[ADDRESS], Paris"),
        ("domicile: 3 bis avenue Foch", "domicile: [ADDRESS]"),
        ("5 av. Jean Jaurès; tel", "[ADDRESS]; tel"),
        ("14 BOULEVARD HAUSSMANN", "[ADDRESS]"),
        ("2 allée des Tilleuls, 75002 Paris", "[ADDRESS], [ADDRESS]"),
        ("8 impasse du Moulin", "[ADDRESS]"),
        ("1 place Bellecour", "[ADDRESS]"),
        ("7 quai Saint-Michel", "[ADDRESS]"),
        ("CP 69003 Lyon", "CP [ADDRESS]"),
        ("20000 Ajaccio", "[ADDRESS]"),
    ],
)
def test_addresses_are_replaced(cleaner: TextCleaner, text: str, expected: str) -> None:
    assert cleaner.clean(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "rue de la Paix",  # no house number
        "3 rues",
        "12345 images",  # lower-case word after a 5-digit number
        "10000 Hz",
        "99000 Paris",  # not a French postcode range
        "1.2.75002 Paris",
    ],
)
def test_address_lookalikes_are_kept(cleaner: TextCleaner, text: str) -> None:
    assert cleaner.clean(text) is text


# --- everything at once ----------------------------------------------------------------------


def test_a_realistic_comment() -> None:
    text = (
        "IRM du 03/02/2024 pour Mme DUPONT Hélène (IPP 8001234567, NIR 2 84 03 75 123 456 ??), "
        "née le 12/03/1984, 12 rue de la Paix, 75002 Paris, tel 06 12 34 56 78. "
        "Compte rendu: Dr Martin, T2 FLAIR 3 mm."
    )
    expected = (
        "IRM du 24/01/2024 pour Mme [NAME] (IPP [ID], NIR 2 84 03 75 123 456 ??), "
        "née le [DATE], [ADDRESS], [ADDRESS], tel [PHONE]. "
        "Compte rendu: Dr [NAME], T2 FLAIR 3 mm."
    )
    assert TextCleaner(DUPONT, shift_by(-10)).clean(text) == expected
