"""The consent's answer, its audit record and the pending request commit together, or not at all.

A failure is injected with a real database trigger that refuses the insert of
the grant (or of the audit record), after the point where the audit record used
to be written on its own. Nothing of the answer may remain: no audit record of a
grant that does not exist, and the request still waiting, so the patient's next
try works. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from gateway.auth.clients import ClientKind
from gateway.store.models import AuditRecord, Grant
from tests.auth.test_authorize import REDIRECT, authorize_params, follow_to_consent, hidden, pkce
from tests.auth.test_oauth_api import Harness
from tests.portal.support import DATABASES, Clock, enroll, portal_harness


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(tmp_path, embedded_data_dir, Clock(), request.param) as made:
        yield made


def consent_page(harness: Harness) -> str:
    app = harness.call(
        harness.services.auth.clients.add,
        name="Consenting app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    patient = enroll(harness)
    _, challenge = pkce()
    return follow_to_consent(harness, authorize_params(app, challenge), {"code": patient.code})


def answer(harness: Harness, page: str, decision: str) -> int | None:
    """Post the consent form; its status, or None when the injected failure escaped."""
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "request": hidden(page, "request"),
        "decision": decision,
        "scope": re.findall(r'name="scope" value="([^"]*)"', page),
    }
    try:
        posted = harness.client.post("/oauth/consent", data=form, follow_redirects=False)
    except DBAPIError:
        return None  # the in-process client re-raises what the server answered with a 500
    if posted.status_code == 302:
        query = parse_qs(urlsplit(posted.headers["location"]).query)
        return 200 if "code" in query else 403
    return posted.status_code


def failing_inserts(harness: Harness, table: str, on: bool) -> None:
    """A trigger that makes every insert into ``table`` fail (or its removal)."""
    postgres = harness.services.database.url.startswith("postgresql")
    if on and postgres:
        statements = [
            "CREATE FUNCTION injected_failure() RETURNS trigger AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER injected BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION injected_failure()",
        ]
    elif on:
        statements = [
            f"CREATE TRIGGER injected BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
    elif postgres:
        statements = [f"DROP TRIGGER injected ON {table}", "DROP FUNCTION injected_failure()"]
    else:
        statements = ["DROP TRIGGER injected"]

    async def run() -> None:
        async with harness.services.database.engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))

    harness.call(run)


def consent_records(harness: Harness, action: str) -> int:
    async def count() -> int:
        async with harness.services.database.sessions() as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(AuditRecord)
                    .where(AuditRecord.category == "consent", AuditRecord.action == action)
                )
                or 0
            )

    return harness.call(count)  # type: ignore[no-any-return]


def grants(harness: Harness) -> int:
    async def count() -> int:
        async with harness.services.database.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Grant)) or 0)

    return harness.call(count)  # type: ignore[no-any-return]


def test_a_grant_that_fails_leaves_no_audit_record_and_the_request_waiting(
    harness: Harness,
) -> None:
    page = consent_page(harness)
    before = grants(harness)  # the backend grant enroll() used to find the patient
    failing_inserts(harness, "oauth_grant", on=True)
    try:
        assert answer(harness, page, "approve") in (None, 500, 503)
    finally:
        failing_inserts(harness, "oauth_grant", on=False)
    assert consent_records(harness, "grant") == 0
    assert grants(harness) == before
    # The request still waits: the same form, sent again, grants.
    assert answer(harness, page, "approve") == 200
    assert (consent_records(harness, "grant"), grants(harness)) == (1, before + 1)
    # Sent once more, it finds the request answered: no second grant, no second record.
    assert answer(harness, page, "approve") == 400
    assert (consent_records(harness, "grant"), grants(harness)) == (1, before + 1)


def test_a_refusal_whose_record_fails_leaves_the_request_waiting(harness: Harness) -> None:
    page = consent_page(harness)
    failing_inserts(harness, "audit_event", on=True)
    try:
        assert answer(harness, page, "deny") in (None, 500, 503)
    finally:
        failing_inserts(harness, "audit_event", on=False)
    assert consent_records(harness, "deny") == 0
    assert answer(harness, page, "deny") == 403
    assert consent_records(harness, "deny") == 1
