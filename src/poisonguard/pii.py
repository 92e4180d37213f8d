"""Personal data in a table's columns: which kind each column holds, offline, and masks.

A column's kind is read off its values, checked the way each kind is checked in
practice (Luhn for card numbers, ISO 13616 for IBANs, python-stdnum for national
ids, phonenumbers for phone numbers, the standard library for IP addresses), and
for the kinds whose values alone are ambiguous (names, dates of birth, national ids
of nine digits) off the column's name too. Nothing reaches the network and no model
is downloaded. A kind is given when at least :data:`MIN_SHARE` of the column's
non-missing values (a sample of at most :data:`SAMPLE` of them) pass its check, so
one odd value does not make a column personal, and an honest numeric or categorical
column (an age, a price, a region) passes no check.

Kinds (:data:`PII_KINDS`): ``email``, ``phone``, ``card``, ``iban``,
``national_id``, ``ip``, ``name``, ``date_of_birth``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CARD_PATTERN",
    "EMAIL_PATTERN",
    "PII_KINDS",
    "Masker",
    "classify",
    "find_pii",
    "mask",
]

PII_KINDS = ("email", "phone", "card", "iban", "national_id", "ip", "name", "date_of_birth")

#: Share of a column's non-missing values that must pass a kind's check.
MIN_SHARE = 0.8
#: Values looked at per column (a fixed sample past this).
SAMPLE = 500

#: An e-mail address anywhere in a string (also the suite's leak guard).
EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
#: A run of 13 to 19 digits, optionally grouped by spaces or dashes: a card number's shape
#: (also the suite's leak guard; the Luhn check is applied where values are classified).
CARD_PATTERN = r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"

_EMAIL = re.compile(rf"^{EMAIL_PATTERN}$")
_CARD = re.compile(r"^[0-9](?:[ -]?[0-9]){12,18}$")
_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}$")
_PHONE = re.compile(r"^\+?[0-9 ().-]{7,20}$")
#: Regions whose national phone formats are tried for numbers written without ``+``.
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "AU", "NL", "ES", "IT")

# Names that say what a column is: needed for the kinds whose values alone are ambiguous.
_NAME_HINTS = ("surname", "forename", "firstname", "lastname", "fullname", "givenname")
#: Words before "name" that make it a thing's name, not a person's (``team_name``).
_THING_NAMES = frozenset(
    [
        "team",
        "company",
        "product",
        "store",
        "brand",
        "city",
        "country",
        "state",
        "airport",
        "school",
        "file",
        "host",
        "street",
        "place",
        "station",
        "site",
        "org",
        "organisation",
        "organization",
        "business",
        "item",
        "model",
    ]
)
_DOB_HINTS = ("birth", "dob", "born")
_ID_HINTS = ("ssn", "national", "passport", "taxid", "nir", "bsn", "idnr", "dni", "citizen", "nhs")
_PHONE_HINTS = ("phone", "tel", "mobile", "cell", "fax")
_DATE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$")


def _words(column: str) -> list[str]:
    """The column name's words, lowercased (``customerName`` -> ``customer``, ``name``)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _hinted(column: str, hints: Iterable[str]) -> bool:
    key = "".join(_words(column))
    return any(h in key for h in hints)


def _person_name_column(column: str) -> bool:
    """``name``, ``customer_name``, ``last_name``..., but not ``team_name``."""
    words = _words(column)
    if _hinted(column, _NAME_HINTS):
        return True
    if "name" not in words:
        return False
    before = words[words.index("name") - 1] if words.index("name") > 0 else ""
    return before not in _THING_NAMES


def _luhn(digits: str) -> bool:
    from stdnum import luhn

    return bool(luhn.is_valid(digits))


def is_card(value: str) -> bool:
    """A 13-19 digit number (spaces or dashes allowed) that passes the Luhn check."""
    return bool(_CARD.match(value)) and _luhn(re.sub(r"[ -]", "", value))


def is_iban(value: str) -> bool:
    from stdnum import iban

    compact = value.replace(" ", "").upper()
    return bool(_IBAN.match(value.upper())) and bool(iban.is_valid(compact))


def is_phone(value: str, national: bool = True) -> bool:
    """A number phonenumbers finds valid: in international form (``+``), or with
    ``national`` in one of a few regions' national forms. Plain digit runs without ``+``
    need at least one separator, so a bare count or id is not read as a phone number,
    and dates are not phone numbers."""
    import phonenumbers

    if not _PHONE.match(value) or _DATE.match(value):
        return False
    if not national and not value.startswith("+"):
        return False
    digits = re.sub(r"\D", "", value)
    if not 7 <= len(digits) <= 15:
        return False
    if not value.startswith("+") and value == digits:
        return False
    regions = (None,) if value.startswith("+") else _PHONE_REGIONS
    for region in regions:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_national_id(value: str) -> bool:
    """A number valid under one of python-stdnum's national-id formats tried here."""
    from stdnum.be import nn
    from stdnum.de import idnr
    from stdnum.es import dni
    from stdnum.fr import nir
    from stdnum.gb import nhs
    from stdnum.it import codicefiscale
    from stdnum.nl import bsn
    from stdnum.us import ssn

    return any(m.is_valid(value) for m in (ssn, nhs, nir, idnr, dni, bsn, codicefiscale, nn))


def _name_word(word: str) -> bool:
    """``Ana``, ``Chloé``, ``O'Brien``, ``Jean-Luc``, ``J.``: each part a capital, then
    lowercase letters."""
    parts = re.split(r"[-'’]", word.rstrip("."))
    return all(
        p[:1].isupper() and (p[1:] == "" or (p[1:].isalpha() and p[1:].islower())) for p in parts
    )


def is_name(value: str) -> bool:
    """Two to four capitalised words, as personal names are written."""
    words = value.replace(",", " ").split()
    return 2 <= len(words) <= 4 and all(_name_word(w) for w in words)


def _share(values: list[str], check: Callable[[str], bool]) -> float:
    return sum(1 for v in values if check(v)) / len(values) if values else 0.0


def _as_text(series: pd.Series) -> list[str]:
    """A fixed sample of the column's non-missing values as text; integers without a
    decimal point, so a card number stored as a number reads as its digits."""
    values = series.dropna()
    if len(values) > SAMPLE:
        values = values.sample(SAMPLE, random_state=0)
    if pd.api.types.is_bool_dtype(values):
        return []
    if pd.api.types.is_integer_dtype(values):
        return [str(int(v)) for v in values]
    if pd.api.types.is_float_dtype(values):
        whole = values[np.isfinite(values) & (values == np.round(values))]
        return [str(int(v)) for v in whole] if len(whole) == len(values) else []
    return [str(v).strip() for v in values]


def classify(column: str, series: pd.Series) -> str | None:
    """The personal-data kind of one column, or None.

    Parameters
    ----------
    column : str
        The column's name: read for names, dates of birth and national ids.
    series : Series

    Returns
    -------
    str or None
        One of :data:`PII_KINDS`.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        return "date_of_birth" if _hinted(column, _DOB_HINTS) else None
    values = _as_text(series)
    if not values:
        return None
    numeric = pd.api.types.is_numeric_dtype(series)
    checks: list[tuple[str, Callable[[str], bool]]] = [("card", is_card)]
    if not numeric:
        checks += [("email", lambda v: bool(_EMAIL.match(v))), ("iban", is_iban), ("ip", is_ip)]
    if _hinted(column, _ID_HINTS):
        checks.append(("national_id", is_national_id))
    if not numeric:
        national = _hinted(column, _PHONE_HINTS)
        checks.append(("phone", lambda v: is_phone(v, national)))
        if _person_name_column(column):
            checks.append(("name", is_name))
        if _hinted(column, _DOB_HINTS):
            checks.append(("date_of_birth", _is_date))
    for kind, check in checks:
        if _share(values, check) >= MIN_SHARE:
            return kind
    return None


def _is_date(value: str) -> bool:
    """A calendar date to the day (a month or a year alone is not a date of birth)."""
    if not _DATE.match(value):
        return False
    try:
        pd.Timestamp(value)
    except (ValueError, TypeError):
        return False
    return True


def find_pii(frame: pd.DataFrame, skip: Iterable[str] = ()) -> dict[str, str]:
    """``{column: kind}`` for every column of ``frame`` (but ``skip``) holding personal data."""
    left_out = set(skip)
    found = {}
    for column in frame.columns:
        if column in left_out:
            continue
        kind = classify(str(column), frame[column])
        if kind is not None:
            found[str(column)] = kind
    return found


def mask(value: Any, kind: str) -> str:
    """A personal value shown without revealing it: e-mails keep their first letters
    (``j***@e***.com``), numbers their last four digits, names their initials, IP
    addresses their first part; anything else is fully masked."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    # A card or account number read as a float is still its digits.
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if kind == "email" and "@" in text:
        user, _, domain = text.partition("@")
        host, dot, tld = domain.rpartition(".")
        return f"{user[:1]}***@{host[:1]}***{dot}{tld}" if dot else f"{user[:1]}***@***"
    if kind in ("card", "iban", "phone", "national_id"):
        digits = re.sub(r"[^0-9A-Za-z]", "", text)
        return "*" * max(len(digits) - 4, 3) + digits[-4:] if len(digits) > 4 else "****"
    if kind == "name":
        return " ".join(f"{w[:1]}." for w in text.split())
    if kind == "ip":
        head = re.split(r"[.:]", text, maxsplit=1)[0]
        return f"{head}.*.*.*" if "." in text else f"{head}:*"
    return "****"


@dataclass(frozen=True)
class Masker:
    """Masks the personal columns of rows, and their values wherever a reason repeats them.

    Built once from the config's personal-data kinds (``Config.pii``); every place that
    shows rows to people (reasons, reports, Prefect artifacts, ``review show``) goes
    through it, unless a reviewer with the right passes ``--unmask`` (audited).

    Parameters
    ----------
    kinds : mapping of str to str
        Column -> personal-data kind (:data:`PII_KINDS`).
    """

    kinds: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``rows`` with every personal column's values masked (as text)."""
        if not self or rows is None or rows.empty:
            return rows
        out = rows.copy()
        for column, kind in self.kinds.items():
            if column in out.columns:
                out[column] = pd.Series(
                    [mask(v, kind) for v in out[column].tolist()], index=out.index, dtype=object
                )
        return out

    def value(self, column: str, value: Any) -> Any:
        """``value`` masked when ``column`` is personal, else as it is."""
        kind = self.kinds.get(column)
        return value if kind is None else mask(value, kind)

    def reasons(self, rows: pd.DataFrame, reasons: Sequence[str] | np.ndarray) -> list[str]:
        """Each row's reason with its personal values replaced by their masks, however a
        rule or detector wrote them (as text, quoted, or as a whole number)."""
        out = [str(r) for r in reasons]
        if not self:
            return out
        columns = [c for c in self.kinds if c in rows.columns]
        for i, text in enumerate(out):
            if not text:
                continue
            for column in columns:
                value = rows[column].iloc[i]
                for form in _written_forms(value):
                    if form and form in text:
                        text = text.replace(form, mask(value, self.kinds[column]))
            out[i] = text
        return out


def _written_forms(value: Any) -> list[str]:
    """The ways a reason may have written ``value``, longest first: as text, and as the
    rules' and detectors' formatters write numbers (``fmt_number``: whole, thousands
    grouped, significant digits) and dates (the day alone)."""
    from poisonguard.detectors.base import fmt_number

    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, np.generic):
        value = value.item()
    forms = {str(value)}
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        forms.add(fmt_number(value))
        forms.add(format(value, ".10g"))
        if value == int(value):
            forms.add(str(int(value)))
    if isinstance(value, pd.Timestamp | np.datetime64) and not pd.isna(value):
        day = pd.Timestamp(value)
        forms.update({day.date().isoformat(), day.isoformat()})
    return sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)
