"""People who sign in: patients by access code, practitioners by username.

Five wrong answers lock an account for fifteen minutes. Callers show one
message for every failure, so nobody learns which part was wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import hash_secret, new_access_code, new_id, same, verify_secret
from gateway.store.models import Account, as_utc, utcnow

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSPHRASE = 10


class AccountError(ValueError):
    """An account cannot be created as asked; the message says why."""


class Accounts:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def enroll_patient(
        self, patient_fhir_id: str, birth_date: str, display_name: str = ""
    ) -> Account:
        for _ in range(5):
            account = Account(
                id=new_id(),
                kind="patient",
                login=new_access_code(),
                display_name=display_name,
                patient_fhir_id=patient_fhir_id,
                birth_date=birth_date,
                failed_attempts=0,
            )
            try:
                async with self.sessions() as session:
                    session.add(account)
                    await session.commit()
                return account
            except IntegrityError:
                continue  # the access code was taken: draw another
        raise AccountError("could not draw an unused access code")

    async def add_practitioner(self, username: str, name: str, password: str) -> Account:
        if not username or len(username) > 128 or username.isdigit():
            raise AccountError("a username is 1-128 characters and not all digits")
        if len(password) < MIN_PASSPHRASE:
            raise AccountError(f"the password needs at least {MIN_PASSPHRASE} characters")
        account = Account(
            id=new_id(),
            kind="practitioner",
            login=username,
            display_name=name,
            secret_hash=await hash_secret(password),
            failed_attempts=0,
        )
        try:
            async with self.sessions() as session:
                session.add(account)
                await session.commit()
        except IntegrityError:
            raise AccountError(f"the username {username!r} is taken") from None
        return account

    async def get(self, account_id: str) -> Account | None:
        async with self.sessions() as session:
            return await session.get(Account, account_id)

    async def sign_in(self, login: str, secret: str) -> Account | None:
        """The account if ``secret`` is right and it is not locked; else None."""
        return await self._attempt(
            login, lambda account: verify_secret(account.secret_hash, secret)
        )

    async def activate(self, access_code: str, birth_date: str, passphrase: str) -> Account | None:
        """First sign-in of a patient: code and birth date, then the chosen passphrase."""
        if len(passphrase) < MIN_PASSPHRASE:
            raise AccountError(f"the passphrase needs at least {MIN_PASSPHRASE} characters")

        async def check(account: Account) -> bool:
            return (
                account.kind == "patient"
                and account.secret_hash is None
                and same(account.birth_date or "", birth_date)
            )

        account = await self._attempt(access_code, check)
        if account is None:
            return None
        hashed = await hash_secret(passphrase)
        async with self.sessions() as session:
            stored = await session.get(Account, account.id)
            if stored is None or stored.secret_hash is not None:
                return None
            stored.secret_hash = hashed
            await session.commit()
            return stored

    async def _attempt(
        self, login: str, check: Callable[[Account], Awaitable[bool]]
    ) -> Account | None:
        async with self.sessions() as session:
            account = await session.scalar(select(Account).where(Account.login == login[:128]))
            if account is None:
                await verify_secret(None, login)  # the same work as a real check
                return None
            now = utcnow()
            if account.locked_until and as_utc(account.locked_until) > now:
                return None
            if await check(account):
                account.failed_attempts = 0
                account.locked_until = None
                await session.commit()
                return account
            account.failed_attempts += 1
            if account.failed_attempts >= MAX_FAILURES:
                account.locked_until = now + LOCKOUT
                account.failed_attempts = 0
            await session.commit()
            return None
