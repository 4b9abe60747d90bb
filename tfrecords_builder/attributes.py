"""Product attributes of a metadata record: brand, price, average rating, number of ratings.

What each format holds (as published):

- 2014 (McAuley): ``brand`` (text, often absent), ``price`` (a float, often absent); no ratings;
- 2018 (Ni): ``brand`` (text, may be ""), ``price`` (text: ``"$12.99"``, a range
  ``"$10.00 - $20.00"``, ``""``, or page residue such as CSS); no ratings;
- 2023 (Hou): ``store`` (the brand or seller name; ``details["Brand"]`` when it is empty),
  ``price`` (a number, a text or None), ``average_rating`` (0-5), ``rating_number`` (a count).

Missing is missing: every function here returns None (never 0 or "") for a value that is
absent, empty or not understood. A price is a number >= 0: a number stays a number, ``"$12.99"``
gives 12.99, a range gives its low end, anything else (``"N/A"``, ``"Currently unavailable"``,
CSS residue, a negative number, NaN) is missing.
"""

import html
import math
import re

#: brand texts that mean "no brand" (compared case-insensitively)
NO_BRAND = frozenset({"n/a", "na", "none", "null", "unknown", "-", "--", "."})
MAX_BRAND_CHARS = 200  # a longer "brand" is page residue, not a name

_NUMBER = r"\$?\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?|\$?\s*\.(\d+)"
_PRICE = re.compile(rf"\s*(?:{_NUMBER})\s*(?:-\s*(?:{_NUMBER})\s*)?")
_COUNT = re.compile(r"\s*(\d{1,3}(?:,\d{3})+|\d+)\s*")


def _finite(value):
    """``float(value)`` for a real number (not a bool) that is finite, else None."""
    kind = type(value)  # (exact types: a bool is no number; the readers only make int, float, str, ...)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is not int:
        return None
    try:
        return float(value)
    except OverflowError:  # an integer past float's range (JSON allows any)
        return None


def _number(whole, frac, only_frac):
    if only_frac is not None:
        return float(f"0.{only_frac}")
    return float(whole.replace(",", "") + (f".{frac}" if frac else ""))


def parse_price(value):
    """A price in dollars (float >= 0), or None when ``value`` holds no price.

    >>> parse_price("$10.00 - $20.00"), parse_price(12), parse_price("N/A")
    (10.0, 12.0, None)
    """
    if type(value) is str:
        m = _PRICE.fullmatch(html.unescape(value) if "&" in value else value)
        if m is None:
            return None
        low = _number(*m.group(1, 2, 3))
        if m.group(4) is not None or m.group(6) is not None:  # a range: its low end (the two in any order)
            low = min(low, _number(*m.group(4, 5, 6)))
        return low if math.isfinite(low) else None
    value = _finite(value)
    return value if value is not None and value >= 0 else None


def parse_rating(value):
    """An average rating in [0, 5] (a number or a numeric text), or None."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    value = _finite(value)
    return value if value is not None and 0 <= value <= 5 else None


def parse_count(value):
    """A number of ratings (a whole number >= 0, ``"1,234"`` accepted), as a float, or None."""
    if isinstance(value, str):
        m = _COUNT.fullmatch(value)
        return _finite(float(m.group(1).replace(",", ""))) if m else None
    value = _finite(value)
    return value if value is not None and value >= 0 and value == int(value) else None


def parse_brand(value):
    """A brand name: unescaped, whitespace folded; None when empty, a placeholder or not text."""
    if type(value) is not str or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates -> "?"
        value = value.encode("utf-8", "replace").decode("utf-8")
    if "&" in value:
        value = html.unescape(value)
    value = " ".join(value.split())
    if not value or value.casefold() in NO_BRAND or len(value) > MAX_BRAND_CHARS:
        return None
    return value


def attributes(rec, fmt):
    """``{"brand", "price", "average_rating", "rating_number"}`` of one parsed record (None = missing)."""
    if fmt == "2023":
        brand = parse_brand(rec.get("store"))
        details = rec.get("details")
        if brand is None and isinstance(details, dict):
            brand = parse_brand(details.get("Brand"))
        return {
            "brand": brand,
            "price": parse_price(rec.get("price")),
            "average_rating": parse_rating(rec.get("average_rating")),
            "rating_number": parse_count(rec.get("rating_number")),
        }
    return {
        "brand": parse_brand(rec.get("brand")),
        "price": parse_price(rec.get("price")),
        "average_rating": None,
        "rating_number": None,
    }


#: the attribute names, in the dataset's and the items table's order
NAMES = ("brand", "price", "average_rating", "rating_number")
