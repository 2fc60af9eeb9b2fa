"""Keeping a secret URL's secret parts out of text we store or print.

A webhook URL authorises writes: its path, its query and any ``user:password@`` are secret, and a
destination's error page may echo them back (``Cannot POST /hook/TOKEN``). Only the scheme and the host
are shown.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

REDACTED = "<redacted>"
# Path segments shorter than this are words of the API ("v1", "hook"), not tokens.
_SHORTEST_SECRET = 6


def secret_parts(url: str) -> list[str]:
    """The pieces of ``url`` that must not appear in text, longest first, as written and percent-decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    pieces = {url, parts.path, parts.query, f"{parts.path}?{parts.query}", parts.username or "", parts.password or ""}
    pieces |= {segment for segment in parts.path.split("/") if len(segment) >= _SHORTEST_SECRET}
    pieces |= {
        value for piece in parts.query.split("&") for value in piece.split("=") if len(value) >= _SHORTEST_SECRET
    }
    pieces |= {variant for piece in list(pieces) for variant in (unquote(piece), quote(piece, safe=""))}
    return sorted((p for p in pieces if p and p != "/" and len(p) >= 2), key=len, reverse=True)


def redact(text: str, parts: list[str]) -> str:
    """``text`` with every secret part replaced by ``<redacted>``."""
    for part in parts:
        if part in text:
            text = text.replace(part, REDACTED)
    return text


def public_label(url: str) -> str:
    """What may be said of a secret URL: its scheme and host (``https://hooks.example.com``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed URL)"
    return f"{parts.scheme}://{host}{port}"
