"""Content negotiation: the format an `Accept` header asks for, among the ones offered."""

from __future__ import annotations

from collections.abc import Mapping

from exporter.api.errors import ProblemError


def _ranges(accept: str) -> list[tuple[str, float, int]]:
    """(media range, q, position) of each element of an Accept header, malformed q as 0."""
    out = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((media.lower(), q, position))
    return out


def _matches(media_range: str, media_type: str) -> int:
    """How specifically a media range matches a type: 2 exact, 1 `type/*`, 0 `*/*`, -1 no."""
    if media_range == media_type:
        return 2
    if media_range == "*/*":
        return 0
    kind, _, sub = media_range.partition("/")
    return 1 if sub == "*" and media_type.split("/")[0] == kind else -1


def negotiate(accept: str | None, offered: Mapping[str, str], default: str) -> str:
    """The offered name (of `offered`: name -> media type) an Accept header prefers; `default`
    without one; 406 when it accepts none of them (RFC 9110 §12.5.1: the most specific range
    that matches a type gives its q; the highest q wins, then the order of `offered`)."""
    if accept is None or not accept.strip():
        return default
    ranges = _ranges(accept)
    best: tuple[float, int] | None = None
    chosen = None
    for rank, (name, media_type) in enumerate(offered.items()):
        specific = [(_matches(r, media_type), q) for r, q, _ in ranges]
        specific = [(m, q) for m, q in specific if m >= 0]
        if not specific:
            continue
        q = max(specific)[1]
        if q > 0 and (best is None or (q, -rank) > best):
            best, chosen = (q, -rank), name
    if chosen is None:
        raise ProblemError(
            406,
            "Not Acceptable",
            "the Accept header allows none of " + ", ".join(offered.values())
            + " (or give format=)",
            param="Accept",
        )
    return chosen
