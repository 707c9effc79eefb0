"""Capability URLs: a WADO-RS base that carries its own permission (SMART Imaging Access,
``requires-access-token = false``). A small service, usable by any issuer: an app's
ImagingStudy search, and a share link's viewer (``portal/recipient_viewer.py``).

A capability is issued within an ``Access``, for studies that Access may see, so it
can never reach further than what authorized it; it allows only reading: QIDO-RS
and WADO-RS (retrieval, metadata, frames, bulk data, rendered) of those studies,
and report content only if the issuer could read reports. It ends at the earliest
of its lifetime (``GATEWAY_CAPABILITY_LIFETIME_SECONDS``) and the expiry of what
issued it (the access token, the share link); before that, when it is revoked
(``DELETE`` on its URL), when the grant behind the token is revoked (the patient
withdraws the app, or any of its tokens is revoked), or when its share link is
withdrawn. Every request checks it again (one query); a response that began
before the end may finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from gateway.errors import Forbidden
from gateway.records.access import Access, PatientKey
from gateway.records.summaries import StudySummary
from gateway.store.capabilities import Capability, CapabilityStore
from gateway.store.models import as_utc
from gateway.store.patients import PatientIndex

__all__ = ["Capability", "CapabilityRecords"]


class CapabilityRecords:
    def __init__(
        self,
        store: CapabilityStore,
        index: PatientIndex,
        clock: Callable[[], datetime],
        lifetime: timedelta,
        dicomweb_url: str,
    ) -> None:
        self.store = store
        self.index = index
        self.clock = clock
        self.lifetime = lifetime
        self.dicomweb_url = dicomweb_url.rstrip("/")

    def url(self, secret: str) -> str:
        """The WADO-RS base an app appends ``/studies/{uid}`` to."""
        return f"{self.dicomweb_url}/cap/{secret}"

    async def issue(
        self,
        access: Access,
        studies: Sequence[StudySummary],
        *,
        until: datetime | None,
        grant_id: str | None = None,
        share_id: str | None = None,
    ) -> str:
        """A capability URL for ``studies`` (each one the Access may see), ending no later
        than ``until`` (the expiry of what authorized it, which must be known)."""
        if until is None:
            raise Forbidden("A capability URL needs an authorization whose expiry is known.")
        shown = [s for s in studies if access.visibility.permits(s.source) and s.patient]
        if not shown or len(shown) != len(studies):
            raise Forbidden("A capability URL covers only studies this access may see.")
        until = as_utc(until)  # a stored end read back from SQLite has no zone
        keys: list[PatientKey] = [s.patient for s in shown if s.patient]
        ids = await self.index.ids_for(keys)
        now = self.clock()
        _, secret = await self.store.issue(
            patients=keys,
            studies=[s.uid for s in shown],
            reports=access.may("DocumentReference", "r"),
            patient_fhir_ids=ids.values(),
            expires_at=min(until, now + self.lifetime),
            now=now,
            client_id=access.actor.client_id,
            purpose=access.purpose,
            grant_id=grant_id,
            share_id=share_id,
        )
        return self.url(secret)

    async def open(self, secret: str) -> Capability | None:
        """The capability behind a URL's secret, while it holds."""
        return await self.store.find(secret, self.clock())

    async def revoke(self, secret: str) -> bool:
        return await self.store.revoke_secret(secret, self.clock())

    async def renew_for_share(
        self, secret: str, share_id: str, share_ends: datetime
    ) -> datetime | None:
        """A share's viewer, while its recipient's session lasts, keeps its capability for
        another lifetime (never past the share's end); the new end, or None if it no longer
        holds. ``open`` must have found it first: a withdrawn share ends it there."""
        now = self.clock()
        until = min(as_utc(share_ends), now + self.lifetime)
        if until <= now or not await self.store.extend_for_share(secret, share_id, until, now):
            return None
        return until

    async def revoke_for_share(self, share_id: str) -> int:
        return await self.store.revoke_for_share(share_id, self.clock())
