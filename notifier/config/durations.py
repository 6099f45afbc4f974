"""Durations as people write them in configuration: ``30m``, ``1h``, ``1d``, ``1h30m`` or seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator

_DURATION: Final = re.compile(r"(\d+)\s*([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds in ``value``; :class:`ValueError` (naming ``what``) if it is not a positive duration."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30m, 1h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and _DURATION.sub("", value).strip() == "":
        seconds = float(sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(value)))
    else:
        raise ValueError(f"expected a duration like 30m, 1h or 1d, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


# A config field holding seconds, written as a number or as "30m", "2h", "1d".
Seconds = Annotated[float, BeforeValidator(lambda value: parse_duration(value))]
