"""The patient's jacket as pages show it: one line per study, on the consent page and
in the portal. The studies come from the records layer's typed summaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.records.jacket import Jacket

MAX_STUDIES = 500
# Reports, manifests and presentation states: in the study, but not what a patient calls it.
NOT_IMAGES = frozenset({"SR", "KO", "DOC", "PR"})
# What the patient can choose for how long an app may see the chosen studies.
DURATIONS: dict[str, tuple[str, timedelta | None]] = {
    "1d": ("One day", timedelta(days=1)),
    "7d": ("One week", timedelta(days=7)),
    "30d": ("30 days", timedelta(days=30)),
    "revoke": ("Until I revoke it", None),
}


@dataclass(frozen=True)
class JacketStudy:
    uid: str
    date: str
    modalities: str
    description: str
    has_report: bool
    # When a study still under the release delay reaches the patient ("" once it has).
    available_from: str = ""

    @property
    def held(self) -> bool:
        return bool(self.available_from)

    @property
    def name(self) -> str:
        return f"{self.description} ({self.date})" if self.date else self.description


def lines(jacket: Jacket) -> list[JacketStudy]:
    """The jacket's studies, newest first, each saying whether it is still held back."""
    held = jacket.held
    return [
        JacketStudy(
            uid=study.uid,
            date=study.date,
            modalities=", ".join(m for m in study.modalities if m not in NOT_IMAGES),
            description=study.description or "Imaging study",
            has_report=study.has_report,
            available_from=moment(held[study.uid]) if study.uid in held else "",
        )
        for study in jacket.studies[:MAX_STUDIES]
    ]


def moment(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def consent_until(choice: str, now: datetime | None = None) -> str | None:
    """The end of the consent as an ISO instant, or None for "until I revoke it"."""
    _, length = DURATIONS[choice]
    if length is None:
        return None
    return ((now or datetime.now(UTC)) + length).isoformat(timespec="seconds")
