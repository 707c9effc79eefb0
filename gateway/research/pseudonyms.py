"""Keyed pseudonyms for one research project: patient IDs, UIDs and date offsets.

Every value is an HMAC-SHA256 of the original under the project's secret, so
the same study donated twice to one project gets the same pseudonyms, and two
projects (two secrets) cannot link their copies without the secrets.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

MIN_KEY_BYTES = 32
# Dates move back by 1 to MAX_SHIFT_DAYS days, the same for all of one patient's data.
MAX_SHIFT_DAYS = 3652
PATIENT_ID_PREFIX = "RP-"


class ProjectKeyError(ValueError):
    """The project key is missing or too short."""


@dataclass(frozen=True, repr=False)
class ProjectKey:
    """A project's secret. Its repr never shows the secret."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ProjectKeyError(f"a project key needs at least {MIN_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return "ProjectKey(...)"

    @classmethod
    def from_file(cls, path: Path) -> ProjectKey:
        """The key in a file: its bytes, less surrounding whitespace (hex or any text)."""
        return cls(path.read_bytes().strip())


class Pseudonyms:
    """The keyed mappings of one project."""

    def __init__(self, key: ProjectKey) -> None:
        self._key = key.secret

    def _digest(self, purpose: str, *parts: str) -> bytes:
        message = "\x00".join((purpose, *parts)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """A patient's pseudonymous ID (also used as the name): 'RP-' and 20 hex digits."""
        return PATIENT_ID_PREFIX + self._digest("patient", issuer, patient_id).hex()[:20].upper()

    def uid(self, original: str) -> str:
        """A valid UID for ``original``: 2.25 and a UUID (RFC 9562 version 8) from the HMAC."""
        value = bytearray(self._digest("uid", original.strip().rstrip("\x00"))[:16])
        value[6] = (value[6] & 0x0F) | 0x80  # version 8: custom
        value[8] = (value[8] & 0x3F) | 0x80  # the RFC variant
        return f"2.25.{int.from_bytes(value, 'big')}"

    def date_offset(self, patient_id: str, issuer: str = "") -> timedelta:
        """How far back this patient's dates move: 1 to MAX_SHIFT_DAYS whole days."""
        number = int.from_bytes(self._digest("date-offset", issuer, patient_id)[:8], "big")
        return -timedelta(days=1 + number % MAX_SHIFT_DAYS)


def shift_date(value: str, offset: timedelta) -> str | None:
    """A DA value (YYYYMMDD) moved by ``offset``; None when it is not a whole date."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return (day + offset).strftime("%Y%m%d")


def shift_datetime(value: str, offset: timedelta) -> str | None:
    """A DT value moved by ``offset`` whole days: its date part shifted, time and UTC
    offset kept; a year-only or year-month value is shifted as its first day."""
    text = value.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits < 4:
        return None
    head = text[: min(digits, 8)]
    padded = head + "0101"[len(head) - 4 :] if len(head) < 8 else head
    moved = shift_date(padded, offset)
    if moved is None:
        return None
    return moved[: len(head)] + text[len(head) :]
