"""Words for numbers, as an operator reads them: "1 trait", "2 traits", "older than 1 day"."""

from __future__ import annotations

# Nouns whose plural is not the noun with an "s".
_IRREGULAR = {"entry": "entries", "was": "were", "is": "are", "has": "have"}


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one."""
    return f"{count} {noun if count == 1 else _IRREGULAR.get(noun, noun + 's')}"
