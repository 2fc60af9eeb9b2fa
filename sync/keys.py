"""Audience and trait keys: the snake_case names Engage gives computations.

Engage's keys follow Segment's Go package ``go-snakecase`` (its current version) rather than lodash: a word
is a run of capitals and digits followed by a run of lower-case letters and digits, and anything else
separates words. So ``orderCompletedLast30Days`` becomes ``order_completed_last30_days`` and ``ABCTest``
becomes ``abctest``. A name already in snake case is kept as it is, but an underscore is kept only after the
first character: ``_vip`` becomes ``vip``. Unlike that package, accented letters are transliterated first
(``Über Kunden`` → ``uber_kunden``) instead of being dropped.
"""

from __future__ import annotations

import unicodedata

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
    kept, lower_seen, underscore_seen, lower_since_underscore = 0, False, False, False
    # A prefix already in snake case: lower-case letters, digits, and single underscores (not first) before
    # a lower-case letter or digit.
    while kept < len(text):
        char = text[kept]
        if _is_lower(char):
            lower_seen = True
            lower_since_underscore = lower_since_underscore or underscore_seen
        elif char == "_" and 0 < kept < len(text) - 1 and (_is_lower(text[kept + 1]) or text[kept + 1].isdigit()):
            underscore_seen, lower_since_underscore = True, False
        elif not char.isdigit():
            break
        kept += 1
    if kept == len(text):
        return text
    key = text[:kept]
    # Capitals right after a prefix with no lower-case word ("5TEst", "edf_6N") continue its last word.
    joins = not lower_seen or (underscore_seen and not lower_since_underscore)
    if joins and text[kept].isupper():
        word, kept = _word(text, kept)
        key += word
    while kept < len(text):
        if not (text[kept].isalnum()):
            kept += 1
            continue
        word, kept = _word(text, kept)
        key += ("_" if key else "") + word
    return key


def _is_lower(char: str) -> bool:
    return "a" <= char <= "z"


def _word(text: str, start: int) -> tuple[str, int]:
    """The word at ``start`` (capitals and digits, then lower-case letters and digits), lower-cased, and
    where it ends."""
    end = start
    while end < len(text) and (text[end].isupper() or text[end].isdigit()):
        end += 1
    while end < len(text) and (_is_lower(text[end]) or text[end].isdigit()):
        end += 1
    return text[start:end].lower(), end
