"""Audience and trait keys: the snake_case names Engage gives computations.

Engage's keys follow Segment's Go ``snakecase`` package rather than lodash: a word is a run of capitals
and digits followed by a run of lower-case letters and digits, and anything else separates words. So
``orderCompletedLast30Days`` becomes ``order_completed_last30_days`` and ``ABCTest`` becomes ``abctest``.
Unlike that package, accented letters are transliterated first (``Über Kunden`` → ``uber_kunden``)
instead of being dropped.
"""

from __future__ import annotations

import re
import unicodedata

# A lower-case/digit prefix (with single underscores before a lower-case letter or digit) is kept as is.
_KEPT_PREFIX = re.compile(r"(?:[a-z0-9]|_(?=[a-z0-9]))*")
# One word: capitals and digits, then lower-case letters and digits.
_WORD = re.compile(r"[A-Z0-9]*[a-z0-9]*")
# A prefix whose last word is all digits: "edf_6" in "edf_6N", "5" in "5TEst".
_TRAILING_DIGIT_WORD = re.compile(r"(?:^|_)([0-9]+)$")
# Letters that NFKD does not decompose into an ASCII base letter.
_LIGATURES = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "þ": "th",
        "Þ": "TH",
    }
)


def transliterate(text: str) -> str:
    """Replace accented Latin letters by their ASCII base letters; any other character becomes a space.

    A character with no ASCII base still separates words, as a non-ASCII byte does in Segment's package.
    """
    return "".join(_ascii_of(char) for char in text.translate(_LIGATURES))


def _ascii_of(char: str) -> str:
    if char.isascii():
        return char
    base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii")
    return base or " "


def snake_case(name: str) -> str:
    """The Engage key of an audience or trait name; empty when the name has no usable letter or digit."""
    text = transliterate(name)
    start = _KEPT_PREFIX.match(text)
    kept = start.end() if start else 0
    if kept == len(text):
        return text
    digits = _TRAILING_DIGIT_WORD.search(text, 0, kept)
    if digits and text[kept].isupper():
        kept = digits.start(1)  # a number followed by a capital starts the next word ("5TEst" → "5test")
    prefix = text[:kept].rstrip("_")
    words = [prefix] if prefix else []
    words += [match.group().lower() for match in _WORD.finditer(text, kept) if match.group()]
    return "_".join(words)
