"""Text for RFC 6749 ``error_description`` values.

RFC 6749 5.2 allows only %x20-21 / %x23-5B / %x5D-7E there, and authlib raises
``ValueError`` when constructing an error with anything else, so a description
that quotes what a client sent (a parameter name, a header) must be made safe
first, or the error itself becomes a 500.
"""

from __future__ import annotations

MAX_LENGTH = 300


def description(text: str) -> str:
    """``text`` with every character RFC 6749 forbids in a description replaced by ``?``."""
    safe = "".join(
        char if 0x20 <= ord(char) <= 0x7E and char not in '"\\' else "?" for char in text
    )
    return safe[:MAX_LENGTH]
