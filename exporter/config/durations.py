"""Human-readable durations ("500ms", "5m", "1h30m", "90d") as a pydantic type."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from fractions import Fraction
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer
from pydantic_core import PydanticCustomError

__all__ = ["Duration", "PositiveDuration", "format_duration", "parse_duration"]

# Microseconds per unit, largest first; a duration lists units in this order, each at most once.
_UNITS: dict[str, int] = {
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
    "us": 1,
}
_UNIT_RANK = {unit: rank for rank, unit in enumerate(_UNITS)}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|w|d|h|m|s)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MAX_MICROSECONDS = timedelta.max // timedelta(microseconds=1)


def parse_duration(value: object) -> timedelta:
    """Parse "2s", "500ms", "1h30m", "2w" or a number of seconds; raise ValueError if invalid."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"invalid duration {str(value)!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, str):
        text = value.strip()
        micros = _parse_text(text)
        if micros is None:
            raise ValueError(f"invalid duration {value!r}")
    else:
        text = str(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {text!r}")
        micros = Fraction(value) * _UNITS["s"]
    rounded = round(micros)
    if rounded > _MAX_MICROSECONDS:
        raise ValueError(f"invalid duration {text!r}: too large")
    return timedelta(microseconds=rounded)


def _parse_text(text: str) -> Fraction | None:
    """Return the microseconds in a duration string, or None when it is malformed."""
    if _NUMBER.fullmatch(text):
        return Fraction(text) * _UNITS["s"]
    total = Fraction(0)
    position = 0
    last_rank = -1
    for match in _PART.finditer(text):
        rank = _UNIT_RANK[match.group(2)]
        if match.start() != position or rank <= last_rank:
            return None
        total += Fraction(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
        last_rank = rank
    if position == 0 or position != len(text):
        return None
    return total


def format_duration(value: timedelta) -> str:
    """Format a timedelta as a unit string that parses back to it ("5m", "1h30m", "90d")."""
    if value < timedelta(0):
        raise ValueError(f"cannot format negative duration {value}")
    remaining = value // timedelta(microseconds=1)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s", "ms", "us"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _validate(value: object) -> timedelta:
    """Pydantic before-validator: parse a duration or raise a readable error."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_duration", "{reason}", {"reason": str(exc)}) from None


def _validate_positive(value: object) -> timedelta:
    """Pydantic before-validator: parse a duration that must be greater than zero."""
    result = _validate(value)
    if result <= timedelta(0):
        raise PydanticCustomError("duration_not_positive", "must be greater than 0")
    return result


_SERIALIZER = PlainSerializer(format_duration, return_type=str, when_used="json")

Duration = Annotated[timedelta, BeforeValidator(_validate), _SERIALIZER]
"""A non-negative duration: "500ms", "2s", "5m", "1h30m", "90d", "2w" or seconds as a number."""

PositiveDuration = Annotated[timedelta, BeforeValidator(_validate_positive), _SERIALIZER]
"""A duration that must be greater than zero."""
