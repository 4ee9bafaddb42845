"""Cursor pagination: `limit` and an opaque `cursor` in, `next` (and a `Link` header) out."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import Field

from exporter.api.errors import ProblemError
from exporter.api.params import QueryModel

MAX_LIMIT = 1000
_MAX_CURSOR = 512


class PageQuery(QueryModel):
    """A page of a listing: how many items, and where the previous page stopped."""

    limit: int | None = Field(None, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, max_length=_MAX_CURSOR)


def encode_cursor(key: Sequence[str]) -> str:
    """The opaque cursor after an item whose sort key is `key` (text values)."""
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str, parsers: Sequence[Callable[[str], Any]]) -> list[Any]:
    """The sort key in a cursor: one text value per parser, each parsed by it (`str`,
    `datetime.fromisoformat`, `uuid.UUID`, ...); 400 naming `cursor` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = json.loads(raw)
        if not (
            isinstance(key, list)
            and len(key) == len(parsers)
            and all(isinstance(v, str) for v in key)
        ):
            raise ValueError(text)
        return [parse(v) for parse, v in zip(parsers, key, strict=True)]
    except (binascii.Error, ValueError):
        raise ProblemError(
            400, "Invalid parameter", "is not a cursor this listing gave", param="cursor"
        ) from None


@dataclass(frozen=True, slots=True)
class Page:
    """The items of one page and the URL of the next (None on the last page)."""

    items: list[Any]
    next: str | None

    def link(self, response: web.Response) -> web.Response:
        """`response` with a `Link: <next>; rel="next"` header when there is a next page."""
        if self.next is not None:
            response.headers["Link"] = f'<{self.next}>; rel="next"'
        return response


def page_of(request: web.Request, rows: list[Any], limit: int, key: Any) -> Page:
    """A page from `limit + 1` fetched rows: the extra row only says there is a next page,
    whose cursor is the key of the last row shown."""
    if len(rows) <= limit:
        return Page(rows, None)
    shown = rows[:limit]
    query = {k: v for k, v in request.query.items() if k != "cursor"}
    query["limit"] = str(limit)
    query["cursor"] = encode_cursor(key(shown[-1]))
    return Page(shown, str(request.rel_url.with_query(query)))
