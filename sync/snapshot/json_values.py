"""Trait values as JSON carries them: what is sent, what is refused (with why), and canonical texts to
compare values of any type. Pure."""

from __future__ import annotations

import json
import math
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass


# Lists and mappings in a trait value nest at most this deep.
_DEEPEST = 32
# Integers beyond this are not exact as float64: such a trait column is hashed by its JSON text instead,
# and their values are sent as doubles (see json_value).
EXACT_INT = 2**53


def json_value(value: object, depth: int = 0) -> tuple[Any, str | None]:
    """A value as JSON can carry it, or a problem that says why it cannot.

    Numbers are sent as JSON numbers of double precision, which is how Segment's runtime and ChartMogul
    read them: integers up to 2**53 exactly, anything larger and decimals of more than 15 to 17 significant
    digits rounded to the nearest double. Infinite values, numbers beyond a double's range and values of
    types JSON has no form for skip their row with a report.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None, None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str):
        return value, None
    if isinstance(value, int):
        return (value, None) if abs(value) < EXACT_INT else _double(float(value), value)
    if isinstance(value, float):
        if math.isnan(value):
            return None, None
        return (value, None) if math.isfinite(value) else (None, f"value {value} is not a finite number")
    if isinstance(value, Decimal):
        if value.is_nan():
            return None, None
        if not value.is_finite():
            return None, f"value {value} is not a finite number"
        if value == value.to_integral_value() and abs(value) < EXACT_INT:
            return int(value), None
        return _double(float(value), value)
    if isinstance(value, datetime | date | time):
        return value.isoformat(), None
    if isinstance(value, uuid.UUID):
        return str(value), None
    if isinstance(value, list | tuple | dict):
        return _json_container(value, depth)
    return None, f"value of type {type(value).__name__} cannot be sent as JSON"


def _double(number: float, value: object) -> tuple[Any, str | None]:
    if not math.isfinite(number):
        return None, f"value {str(value)[:40]} is beyond the range of a JSON number"
    return number, None


def _json_container(value: list[Any] | tuple[Any, ...] | dict[Any, Any], depth: int) -> tuple[Any, str | None]:
    """A list or mapping with every element made JSON-ready, or the first element's problem."""
    if depth > _DEEPEST:
        return None, f"value nests deeper than {_DEEPEST} levels"
    elements = value.values() if isinstance(value, dict) else value
    converted: list[Any] = []
    for element in elements:
        ready, problem = json_value(element, depth + 1)
        if problem:
            return None, problem
        converted.append(ready)
    if isinstance(value, dict):
        return dict(zip(map(str, value), converted, strict=True)), None
    return converted, None


def canonical(value: object) -> str:
    """A text that is equal for values that are equal as JSON values (``3`` and ``3.0`` alike)."""
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        number = value + 0.0
        return f"n:{int(number)}" if number.is_integer() else f"n:{number!r}"
    if isinstance(value, str):
        return "s:" + value
    return "j:" + json_key(value)


def json_key(value: object) -> str:
    """A canonical text of a JSON value, to compare values of any type."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
