"""Tables of what the gateway owns. The PACS stays the source of truth for images."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class PatientRecord(Base):
    """A stable opaque FHIR id for each (issuer of patient id, PatientID).

    The MRN must never appear in a URL, and the same MRN from two issuers is
    two people, so the pair is the key and the id is random.
    """

    __tablename__ = "patient_index"
    __table_args__ = (UniqueConstraint("issuer", "patient_id", name="uq_patient_index_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(128), default="")
    patient_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
