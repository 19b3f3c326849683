"""Type checks of scalar arguments (private): each failure is an ``InvalidInputError`` that names
the argument, the expected type and the value given.

Integers are accepted where ``operator.index`` accepts them (``int``, NumPy integers), never a
``bool`` or a ``float`` (``32.0`` is not a group size); reals are ``int`` or ``float`` (not
``bool``); flags are ``bool`` only.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError

__all__ = ["check_bool", "check_int", "check_int_pair", "check_real", "check_str", "describe"]


def describe(value: Any) -> str:
    """``repr`` of a value with its type, for messages: ``32.0 (float)``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              none: bool = False) -> Any:
    """``value`` as an ``int`` (``None`` passes when ``none``), within ``[minimum, maximum]``."""
    if value is None and none:
        return None
    if isinstance(value, bool):
        raise InvalidInputError(name, _int_expectation(minimum, maximum, none), describe(value))
    try:
        out = operator.index(value)
    except TypeError:
        raise InvalidInputError(name, _int_expectation(minimum, maximum, none), describe(value)) from None
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        raise InvalidInputError(name, _int_expectation(minimum, maximum, none), out)
    return out


def _int_expectation(minimum: int | None, maximum: int | None, none: bool) -> str:
    if minimum is not None and maximum is not None:
        text = f"an int in [{minimum}, {maximum}]"
    elif minimum == 1:
        text = "a positive int"
    elif minimum == 0:
        text = "a non-negative int"
    elif minimum is not None:
        text = f"an int >= {minimum}"
    elif maximum is not None:
        text = f"an int <= {maximum}"
    else:
        text = "an int"
    return text + (" or None" if none else "")


def check_real(name: str, value: Any, *, positive: bool = False, none: bool = False) -> float | None:
    """``value`` as a finite ``float`` (an ``int`` or ``float``, not a ``bool``)."""
    if value is None and none:
        return None
    what = ("a positive finite number" if positive else "a finite number") + (" or None" if none else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(name, what, describe(value))
    out = float(value)
    if not math.isfinite(out) or (positive and out <= 0):
        raise InvalidInputError(name, what, value)
    return out


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise InvalidInputError(name, "a bool (True or False)", describe(value))
    return value


def check_str(name: str, value: Any, choices: Sequence[str] | None = None) -> str:
    """``value`` if it is a ``str`` (and one of ``choices``, compared exactly)."""
    if not isinstance(value, str) or (choices is not None and value not in choices):
        expected = "one of " + ", ".join(map(repr, choices)) if choices is not None else "a str"
        raise InvalidInputError(name, expected, describe(value) if not isinstance(value, str) else repr(value))
    return value


def check_int_pair(name: str, value: Any, *, positive: bool = True) -> tuple[int, int]:
    """``value`` as a pair of ints, e.g. a block shape ``[block_n, block_k]``."""
    what = "a sequence of two positive ints [n, k]" if positive else "a sequence of two ints"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidInputError(name, what, describe(value))
    out = []
    for v in value:
        if isinstance(v, bool):
            raise InvalidInputError(name, what, describe(value))
        try:
            i = operator.index(v)
        except TypeError:
            raise InvalidInputError(name, what, describe(value)) from None
        if positive and i <= 0:
            raise InvalidInputError(name, what, list(value))
        out.append(i)
    return out[0], out[1]
