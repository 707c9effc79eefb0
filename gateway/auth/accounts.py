"""People who sign in: patients by access code, practitioners by username.

Five wrong answers lock an account for fifteen minutes. Each answer takes its
try with one conditional UPDATE before the secret is checked, so parallel
guesses get no more than sequential ones; the fifth try sets the lock as it is
taken, and a right answer gives the tries back (lifting that lock).
Every sign-in costs one argon2 verification and every activation one argon2
hash, whatever the outcome, so timing does not tell a known access code from
an unknown one. Callers show one message for every failure, so nobody learns
which part was wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import and_, case, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import hash_secret, new_access_code, new_id, same, verify_secret
from gateway.store.models import Account, utcnow

# Something to run in the same transaction as an account's try (another counter's try).
Step = Callable[[AsyncSession], Awaitable[None]]
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

    async def sign_in(
        self, login: str, secret: str, *, first: Step | None = None
    ) -> Account | None:
        """The account if ``secret`` is right and it is not locked; else None.

        One argon2 verification on every path: a real hash, or a dummy for an
        unknown, locked or not yet activated account. ``first`` runs in the
        transaction that takes the account's try, before it (see ``_take_try``).
        """
        account = await self._take_try(login, first)
        right = await verify_secret(account.secret_hash if account else None, secret)
        return await self._settle(account, right)

    async def activate(
        self, access_code: str, birth_date: str, passphrase: str, *, first: Step | None = None
    ) -> Account | None:
        """First sign-in of a patient: code and birth date, then the chosen passphrase."""
        if len(passphrase) < MIN_PASSPHRASE:
            raise AccountError(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
        account = await self._take_try(access_code, first)
        # The new passphrase is hashed on every path, before anything is known: one argon2
        # computation, as a sign-in's verification, so timing tells no outcome from another.
        hashed = await hash_secret(passphrase)
        right = (
            account is not None
            and account.kind == "patient"
            and account.secret_hash is None
            and same(account.birth_date or "", birth_date)
        )
        return await self._settle(account, right, new_secret_hash=hashed)

    async def _take_try(self, login: str, first: Step | None) -> Account | None:
        """Use one of the account's tries, before its secret is checked.

        One conditional UPDATE, so parallel guesses cannot take more than
        MAX_FAILURES. None when there is no such account or no try is left
        (locked); a lock that is over starts a new count.

        ``first`` (the address's try) shares the transaction, so a known code and
        an unknown one both cost one commit that writes: a separate commit for
        the account's row would make a known code answer a few ms later.
        """
        for _ in range(2):
            try:
                return await self._take_try_once(login, first)
            except IntegrityError:
                pass  # ``first`` inserted a row a parallel request inserted too: now it is there
        return await self._take_try_once(login, first)

    async def _take_try_once(self, login: str, first: Step | None) -> Account | None:
        now = utcnow()
        open_count = Account.locked_until.is_(None)
        async with self.sessions() as session:
            if first is not None:
                await first(session)
            taken = await session.execute(
                update(Account)
                .where(
                    Account.login == login[:128],
                    or_(
                        and_(open_count, Account.failed_attempts < MAX_FAILURES),
                        Account.locked_until <= now,
                    ),
                )
                .values(
                    failed_attempts=case((open_count, Account.failed_attempts + 1), else_=1),
                    # The last try locks as it is taken; a right answer on it lifts the lock.
                    locked_until=case(
                        (
                            and_(open_count, Account.failed_attempts + 1 >= MAX_FAILURES),
                            now + LOCKOUT,
                        ),
                        else_=None,
                    ),
                )
                .returning(Account)
                .execution_options(synchronize_session=False)
            )
            account = taken.scalar_one_or_none()
            await session.commit()
            return account

    async def _settle(
        self, account: Account | None, right: bool, new_secret_hash: str | None = None
    ) -> Account | None:
        """A right answer gives the tries back (and lifts a lock its own try set).

        A wrong one has nothing left to do: its try was taken, and the fifth try
        locked the account when it was taken. So a wrong answer for a known
        code costs the same database work as one for an unknown code.
        ``new_secret_hash`` is kept for an activation, once (a parallel one may win).
        """
        if account is None or not right:
            return None
        values: dict[str, object] = {"failed_attempts": 0, "locked_until": None}
        conditions = [Account.id == account.id]
        if new_secret_hash is not None:
            conditions.append(Account.secret_hash.is_(None))
            values["secret_hash"] = new_secret_hash
        async with self.sessions() as session:
            kept = await session.execute(
                update(Account)
                .where(*conditions)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
            if not kept.rowcount:  # type: ignore[attr-defined]
                return None
            return await session.get(Account, account.id, populate_existing=True)
