"""Parsed index rows and their summaries are kept per process, keyed by the stored text:
a warm search parses nothing it parsed before, and a row another replica rewrote is
read anew at once. Two StudyIndex objects on one database stand for two replicas;
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.dicomweb.dicomjson import element, tag
from gateway.records.jacket import Jackets
from gateway.records.release import ReleasePolicy
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from gateway.store.study_index import IndexedStudyRow, ParsedMemo, StudyIndex
from tests.conftest import make_settings, migrate
from tests.portal.support import DATABASES
from tests.records.test_study_index import database_url

KEY = ("issuer", "MRN1")
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def record(uid: str, description: str) -> dict:
    return {
        tag("StudyInstanceUID"): element("UI", uid),
        tag("PatientID"): element("LO", KEY[1]),
        tag("IssuerOfPatientID"): element("LO", KEY[0]),
        tag("StudyDescription"): element("LO", description),
        tag("StudyDate"): element("DA", "20290101"),
    }


@pytest.fixture(params=DATABASES)
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Database]]:
    with database_url(request.param, tmp_path) as url:
        migrate(make_settings(tmp_path, database_url=url))
        databases = [Database(url), Database(url)]
        yield databases
        for database in databases:
            asyncio.run(database.dispose())


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_unchanged_rows_are_parsed_once_and_rewrites_seen_at_once(replicas) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        writer, reader = (StudyIndex(d.sessions) for d in replicas)
        rows = [IndexedStudyRow("1.1", record("1.1", "CT head"), [])]
        await writer.replace(KEY, rows, NOW, 0)
        first, again = await reader.read(KEY), await reader.read(KEY)
        assert first.studies[0].record[tag("StudyDescription")]["Value"] == ["CT head"]
        assert again.studies[0] is first.studies[0]  # not parsed again

        rewritten = [IndexedStudyRow("1.1", record("1.1", "CT head, corrected"), [])]
        await writer.replace(KEY, rewritten, NOW, 0)
        after = await reader.read(KEY)
        assert after.studies[0] is not first.studies[0]
        assert after.studies[0].record[tag("StudyDescription")]["Value"] == ["CT head, corrected"]

    run(scenario())


def test_stored_details_are_parsed_once_and_rewrites_seen_at_once(replicas) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        writer, reader = (StudyIndex(d.sessions) for d in replicas)
        await writer.put_details({"1.1": (1, 1, [{"n": 1}])}, NOW, 10)
        first = (await reader.details(["1.1"]))["1.1"]
        again = (await reader.details(["1.1"]))["1.1"]
        assert first.instances == [{"n": 1}] and again.instances is first.instances

        await writer.put_details({"1.1": (1, 2, [{"n": 1}, {"n": 2}])}, NOW, 10)
        after = (await reader.details(["1.1"]))["1.1"]
        assert after.instances == [{"n": 1}, {"n": 2}] and after.instance_count == 2

    run(scenario())


def test_a_jacket_summarizes_each_stored_row_once(replicas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, release_delay_hours=0)

    async def scenario() -> None:
        writer = StudyIndex(replicas[0].sessions)
        database = replicas[1]
        jackets = Jackets(
            upstream=None,  # type: ignore[arg-type]  # inside the bound: never asked
            index=PatientIndex(database.sessions),
            studies=StudyIndex(database.sessions),
            release=ReleasePolicy(settings, database.sessions, lambda: NOW),
            local_zone=None,
        )
        await writer.replace(KEY, [IndexedStudyRow("1.1", record("1.1", "MR"), [])], NOW, 0)
        (first,) = await jackets.summaries(KEY, NOW)
        (again,) = await jackets.summaries(KEY, NOW)
        assert again is first and first.description == "MR"

        await writer.replace(KEY, [IndexedStudyRow("1.1", record("1.1", "MR knee"), [])], NOW, 0)
        (after,) = await jackets.summaries(KEY, NOW)
        assert after.description == "MR knee"

    run(scenario())


def test_the_memo_is_bounded_in_entries_and_text() -> None:
    parsed: list[tuple[str, ...]] = []

    def parse(key: tuple[str, ...]) -> list[str]:
        parsed.append(key)
        return list(key)

    memo = ParsedMemo(parse, entries=2, chars=10)
    first = memo.get(("abc",))
    assert memo.get(("abc",)) is first and len(parsed) == 1
    memo.get(("x" * 11,))
    memo.get(("x" * 11,))  # more text than the whole bound: never kept
    assert len(parsed) == 3
    memo.get(("de",))
    memo.get(("fg",))  # a third entry empties it
    assert memo.get(("abc",)) is not first and len(parsed) == 6
