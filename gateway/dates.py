"""DICOM dates and times as FHIR ``dateTime``, and the ranges FHIR date search compares.

A DICOM time is local to the modality. With TimezoneOffsetFromUTC, or a
configured local zone, it becomes a FHIR dateTime with its offset; without
either the value is reported as a date alone, because a FHIR dateTime with
a time SHALL carry a zone and stamping local time as UTC would be false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

_DICOM_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DICOM_TIME = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_DICOM_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")
_FHIR_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,  # \d would take other scripts' digits too, and int() reads them
)


@dataclass(frozen=True)
class Moment:
    """A value with its precision: the half-open wall-clock range it covers, and its zone."""

    start: datetime  # naive wall-clock time
    end: datetime
    zone: tzinfo | None

    def aware(self, fallback: tzinfo) -> tuple[datetime, datetime]:
        zone = self.zone or fallback
        return self.start.replace(tzinfo=zone), self.end.replace(tzinfo=zone)


def parse_dicom_date(value: str | None) -> date | None:
    if not value:
        return None
    found = _DICOM_DATE.fullmatch(value.strip().replace(".", ""))
    if not found:
        return None
    try:
        return date(int(found[1]), int(found[2]), int(found[3]))
    except ValueError:
        return None


def parse_dicom_offset(value: str | None) -> timezone | None:
    if not value:
        return None
    found = _DICOM_OFFSET.fullmatch(value.strip())
    if not found:
        return None
    minutes = int(found[2]) * 60 + int(found[3])
    if minutes > 14 * 60:
        return None
    return timezone(timedelta(minutes=-minutes if found[1] == "-" else minutes))


def dicom_moment(
    study_date: str | None,
    study_time: str | None,
    offset: str | None,
    local_zone: ZoneInfo | None,
) -> Moment | None:
    """The moment a DICOM date/time pair names, or None when the date is unusable."""
    day = parse_dicom_date(study_date)
    if day is None:
        return None
    midnight = datetime(day.year, day.month, day.day)
    time_match = _DICOM_TIME.fullmatch((study_time or "").strip())
    zone: tzinfo | None = parse_dicom_offset(offset)
    if time_match is None:
        return Moment(midnight, midnight + timedelta(days=1), zone)
    hour, minute, second, fraction = time_match.groups()
    try:
        start = midnight.replace(
            hour=int(hour),
            minute=int(minute or 0),
            second=int(second or 0),
            microsecond=int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        return Moment(midnight, midnight + timedelta(days=1), zone)
    step = timedelta(seconds=1) if second else timedelta(minutes=1 if minute else 60)
    if zone is None and local_zone is not None:
        local_offset = start.replace(tzinfo=local_zone).utcoffset() or timedelta(0)
        zone = timezone(local_offset) if local_offset else UTC
    return Moment(start, start + step, zone)


def fhir_datetime(
    study_date: str | None,
    study_time: str | None,
    offset: str | None,
    local_zone: ZoneInfo | None,
) -> str | None:
    moment = dicom_moment(study_date, study_time, offset, local_zone)
    if moment is None:
        return None
    has_time = study_time and _DICOM_TIME.fullmatch(study_time.strip())
    if not has_time or moment.zone is None:
        return moment.start.date().isoformat()
    stamp = moment.start.replace(tzinfo=moment.zone)
    text = stamp.isoformat(timespec="microseconds" if stamp.microsecond else "seconds")
    return text.replace("+00:00", "Z") if moment.zone is UTC else text


def parse_fhir_datetime(value: str) -> Moment:
    """A FHIR date search value, at its own precision. Raises ValueError when malformed.

    A value without a zone keeps ``zone=None``: search compares it with the
    study's own wall-clock time.
    """
    found = _FHIR_DATE.fullmatch(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not a FHIR date or dateTime")
    year, month, day, hour, minute, second, fraction, zone_text = found.groups()
    start = datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        int((fraction or "0")[:6].ljust(6, "0")),
    )
    if day is None and month is None:
        end = start.replace(year=start.year + 1)
    elif day is None:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elif hour is None:
        end = start + timedelta(days=1)
    elif second is None:
        end = start + timedelta(minutes=1)
    else:
        end = start + timedelta(seconds=1)
    zone: tzinfo | None = None
    if zone_text == "Z":
        zone = UTC
    elif zone_text:
        sign = -1 if zone_text[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(zone_text[1:3]), minutes=int(zone_text[4:6])))
    return Moment(start, end, zone)
