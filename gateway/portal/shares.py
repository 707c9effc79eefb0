"""Share links: a patient gives chosen studies to someone without an account.

This is phase 2 of RSNA Image Share (direct transfer without a personal health
record). The link holds a 256-bit token, and the database keeps only its SHA-256.
The link opens only with a separate 6-digit PIN, which is shown once and kept
as argon2id. The patient gives the PIN by another way than the link (the
mail never carries it).

A wrong PIN uses one of five tries, taken *before* the check. Parallel guesses
therefore cannot get more than five, and the fifth failure locks the link for
good. Revocation, expiry and the lock are read on every request, so they take
effect at the recipient's next click.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit import AuditEntry
from gateway.auth.secrets import digest, hash_secret, new_id, new_token, verify_secret
from gateway.store.models import ShareLink, as_utc, utcnow

MAX_PIN_FAILURES = 5
MAX_STUDIES = 200
MAX_LABEL = 200
# Deliberately loose (one @, a dot in the domain, no spaces): the mail server decides the rest.
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class ShareState(StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"
    locked = "locked"


class PinCheck(StrEnum):
    opened = "opened"
    wrong = "wrong"
    locked = "locked"  # this guess, or an earlier one, used the last try


class ShareError(ValueError):
    """A share cannot be made as asked; the message is for the patient."""


@dataclass(frozen=True)
class CreatedShare:
    """A new share, with the only copies of its token and PIN (shown once)."""

    share: ShareLink
    token: str
    pin: str


def state_of(share: ShareLink, now: datetime) -> ShareState:
    if share.revoked_at is not None:
        return ShareState.revoked
    if share.locked_at is not None:
        return ShareState.locked
    if as_utc(share.expires_at) <= now:
        return ShareState.expired
    return ShareState.active


def creation_entry(share: ShareLink, account_id: str, note: str = "") -> AuditEntry:
    """The audit record of a share being made (the patient's own act)."""
    until = as_utc(share.expires_at).strftime("%Y-%m-%d %H:%M UTC")
    return AuditEntry(
        category="share",
        action="create",
        outcome=201,
        user=account_id,
        patient=share.patient_fhir_id,
        detail=f"share {share.id}: {len(share.studies)} studies until {until}"
        + (f" for {share.label}" if share.label else "")
        + note,
    )


def new_pin() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


class ShareService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        public_url: str,
        default_days: int,
        max_days: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.public_url = public_url
        self.default_days = default_days
        self.max_days = max_days
        self.clock = clock

    def link(self, token: str) -> str:
        return f"{self.public_url}/share/{token}"

    def day_choices(self) -> list[int]:
        """Lifetimes offered to the patient, the default among them."""
        return sorted({d for d in (1, 7, 30, 90, self.default_days) if d <= self.max_days})

    async def create(
        self,
        *,
        account_id: str,
        patient_fhir_id: str,
        studies: list[str],
        days: int,
        label: str = "",
        email: str | None = None,
    ) -> CreatedShare:
        """A new share of ``studies`` (already checked to be the patient's own, released)."""
        chosen = list(dict.fromkeys(studies))
        if not chosen:
            raise ShareError("Choose at least one study to share.")
        if len(chosen) > MAX_STUDIES:
            raise ShareError(f"A share holds at most {MAX_STUDIES} studies.")
        if not 1 <= days <= self.max_days:
            raise ShareError(f"A share lasts from 1 to {self.max_days} days.")
        label = " ".join(label.split())
        if len(label) > MAX_LABEL:
            raise ShareError(f"The recipient's name is at most {MAX_LABEL} characters.")
        email = (email or "").strip() or None
        if email is not None and (len(email) > 320 or not EMAIL.fullmatch(email)):
            raise ShareError("That email address does not look right.")
        token, pin = new_token(), new_pin()
        share = ShareLink(
            id=new_id(),
            token_hash=digest(token),
            pin_hash=await hash_secret(pin),
            account_id=account_id,
            patient_fhir_id=patient_fhir_id,
            studies=chosen,
            label=label,
            email=email,
            created_at=self.clock(),
            expires_at=self.clock() + timedelta(days=days),
            failed_pins=0,
        )
        async with self.sessions() as session:
            session.add(share)
            await session.commit()
        return CreatedShare(share, token, pin)

    async def get(self, share_id: str) -> ShareLink | None:
        async with self.sessions() as session:
            return await session.get(ShareLink, share_id)

    async def by_token(self, token: str) -> ShareLink | None:
        if not TOKEN.fullmatch(token):
            return None
        async with self.sessions() as session:
            return await session.scalar(
                select(ShareLink).where(ShareLink.token_hash == digest(token))
            )

    async def of_account(self, account_id: str) -> list[ShareLink]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(ShareLink)
                .where(ShareLink.account_id == account_id)
                .order_by(ShareLink.created_at.desc())
            )
            return list(found)

    async def active(self, share_id: str | None) -> ShareLink | None:
        """The share if it still opens (not revoked, expired or locked)."""
        share = await self.get(share_id) if share_id else None
        if share is None or state_of(share, self.clock()) is not ShareState.active:
            return None
        return share

    async def check_pin(self, share: ShareLink, pin: str) -> PinCheck:
        async with self.sessions() as session:
            # Take one try first, atomically: parallel guesses cannot exceed the limit.
            taken = await session.execute(
                update(ShareLink)
                .where(
                    ShareLink.id == share.id,
                    ShareLink.locked_at.is_(None),
                    ShareLink.failed_pins < MAX_PIN_FAILURES,
                )
                .values(failed_pins=ShareLink.failed_pins + 1)
            )
            await session.commit()
        if taken.rowcount == 0:  # type: ignore[attr-defined]
            return PinCheck.locked
        right = await verify_secret(share.pin_hash, pin.strip()[:16])
        async with self.sessions() as session:
            stored = await session.get(ShareLink, share.id)
            if stored is None or stored.locked_at is not None:
                return PinCheck.locked
            if right:
                stored.failed_pins = 0
                stored.last_opened_at = self.clock()
                await session.commit()
                return PinCheck.opened
            if stored.failed_pins >= MAX_PIN_FAILURES:
                stored.locked_at = self.clock()
                await session.commit()
                return PinCheck.locked
            return PinCheck.wrong

    async def revoke(self, share_id: str, account_id: str) -> bool:
        """The patient withdraws a share; its recipient is refused at the next request."""
        async with self.sessions() as session:
            revoked = await session.execute(
                update(ShareLink)
                .where(
                    ShareLink.id == share_id,
                    ShareLink.account_id == account_id,
                    ShareLink.revoked_at.is_(None),
                )
                .values(revoked_at=self.clock())
            )
            await session.commit()
        return bool(revoked.rowcount)  # type: ignore[attr-defined]
