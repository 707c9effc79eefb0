"""The one integer parser for numbers a client sends (query parameters, form fields, headers).

``str.isdigit()`` is true for superscripts, circled digits, and the digits of
other scripts and of full-width forms, and ``int()`` accepts some of those and
rejects others, so a check with one and a
conversion with the other let such input through to a 500. Here only ASCII
digits count, and anything else is :class:`~gateway.errors.BadRequest` naming
the parameter, which every protocol already answers in its own format.
"""

from __future__ import annotations

import re

from gateway.errors import BadRequest

_DIGITS = re.compile(r"[0-9]+")
# Past this, a number is too large for anything the gateway counts (and cheap to convert).
_MAX_DIGITS = 18


def whole_number(
    name: str, text: str, *, minimum: int | None = 0, maximum: int | None = None
) -> int:
    """``text`` as an int within the bounds (both inclusive), or 400 naming ``name``."""
    bounds = _range(minimum, maximum)
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"Parameter '{name}': '{_shown(text)}' is not a whole number{bounds}.")
    value = int(text) if len(text) <= _MAX_DIGITS else None
    if (
        value is None
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise BadRequest(f"Parameter '{name}': '{_shown(text)}' is out of range{bounds}.")
    return value


def _shown(text: str) -> str:
    """The start of what was sent, with anything but ASCII escaped (it may go in a header)."""
    return text[:20].encode("ascii", "backslashreplace").decode("ascii")


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" (from {minimum} to {maximum})"
    if minimum is not None and minimum > 0:
        return f" (at least {minimum})"
    if maximum is not None:
        return f" (at most {maximum})"
    return ""
