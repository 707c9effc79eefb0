"""Does the answer time of a sign-in or an activation tell a known access code from an unknown one?

    .venv/bin/python bench/signin_timing.py [--rounds 40] [--postgres URL] [--json out.json]

For each database (SQLite, then a throwaway PostgreSQL database): migrates a
fresh one, enrolls patients, and posts the portal's sign-in form in-process
(ASGI, the whole request: CSRF, the per-address try, the account's try,
argon2, the audit record). Each round times one request on every path below,
in a random order, and the table gives the median and p95 in ms per path
(``--json`` writes the figures to a file too).
The per-address limit is set out of the way (100,000), so every request is
checked.

- sign-in: a known code with a wrong passphrase, the right one, an unknown
  code, a locked account;
- activation: a known code with a wrong birth date, the right one (a fresh
  account each round), an unknown code, an account already activated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import DEFAULT_POSTGRES, on_both_databases, with_state  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.services import Services  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402

BIRTH_DATE = "1961-04-12"
PASSPHRASE = "correct horse battery"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)] * 1000, 1),
    }


class Browser:
    """One browser session on the portal's sign-in page."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def open(self) -> None:
        self.client.cookies.clear()
        page = await self.client.get("/portal/signin")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text
        self.csrf = found.group(1)

    async def post(self, **fields: str) -> tuple[float, int]:
        started = time.perf_counter()
        answer = await self.client.post("/portal/signin", data={"csrf_token": self.csrf, **fields})
        elapsed = time.perf_counter() - started
        if answer.status_code == 303:
            await self.open()  # a sign-in starts a new session: the next form needs it
        return elapsed, answer.status_code


async def measure(url: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    settings = load_settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=url,
        public_url="http://bench.example",
        secret_attempts_per_ip=100_000,
        auth_required=True,
    )
    database = Database(url)
    await database.upgrade()
    await database.dispose()
    services = Services.build(settings)
    accounts = services.auth.accounts

    async def enrolled(name: str) -> str:
        return (await accounts.enroll_patient(uuid.uuid4().hex, BIRTH_DATE, name)).login

    known = await enrolled("Known")
    await accounts.activate(known, BIRTH_DATE, PASSPHRASE)
    locked = await enrolled("Locked")
    await accounts.activate(locked, BIRTH_DATE, PASSPHRASE)
    fresh = [await enrolled(f"Fresh {i}") for i in range(rounds + 5)]
    wrong_birth = await enrolled("Never activated")

    def unknown() -> str:
        return str(10_000_000 + random.randrange(90_000_000))

    paths: dict[str, Callable[[], dict[str, str]]] = {
        "sign-in, known code, wrong passphrase": lambda: {
            "mode": "patient",
            "access_code": known,
            "passphrase": "not the passphrase",
        },
        "sign-in, known code, right passphrase": lambda: {
            "mode": "patient",
            "access_code": known,
            "passphrase": PASSPHRASE,
        },
        "sign-in, unknown code": lambda: {
            "mode": "patient",
            "access_code": unknown(),
            "passphrase": PASSPHRASE,
        },
        "sign-in, locked account": lambda: {
            "mode": "patient",
            "access_code": locked,
            "passphrase": PASSPHRASE,
        },
        "activation, known code, wrong birth date": lambda: {
            "mode": "activate",
            "access_code": wrong_birth,
            "birth_date": "1970-01-01",
            "passphrase": "a new passphrase",
        },
        "activation, known code, right birth date": lambda: {
            "mode": "activate",
            "access_code": fresh.pop(),
            "birth_date": BIRTH_DATE,
            "passphrase": "a new passphrase",
        },
        "activation, unknown code": lambda: {
            "mode": "activate",
            "access_code": unknown(),
            "birth_date": BIRTH_DATE,
            "passphrase": "a new passphrase",
        },
        "activation, code already activated": lambda: {
            "mode": "activate",
            "access_code": known,
            "birth_date": BIRTH_DATE,
            "passphrase": "a new passphrase",
        },
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    statuses: dict[str, set[int]] = {name: set() for name in paths}

    app = create_app(settings, services=services, check_migrations=False)
    async with app.router.lifespan_context(app) as state:
        # ASGITransport does not run the lifespan; hand its state to each request.
        transport = httpx.ASGITransport(app=with_state(app, state))
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as client:
            browser = Browser(client)
            await browser.open()
            for _ in range(6):  # lock the locked account (and warm up)
                await browser.post(mode="patient", access_code=locked, passphrase="wrong!")
            for round_number in range(rounds + 3):
                order = list(paths)
                random.shuffle(order)
                for name in order:
                    if name == "sign-in, known code, wrong passphrase":
                        await _reset(browser, known)  # so that five of these never lock it
                    elapsed, status = await browser.post(**paths[name]())
                    statuses[name].add(status)
                    if round_number >= 3:  # the first rounds warm up
                        samples[name].append(elapsed)
    await services.aclose()
    return {
        name: {**summary(times), "status": sorted(statuses[name])}
        for name, times in samples.items()
    }


async def _reset(browser: Browser, code: str) -> None:
    await browser.post(mode="patient", access_code=code, passphrase=PASSPHRASE)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--postgres", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = await on_both_databases(measure, args.rounds, args.postgres)
    print(f"{report['machine']}, {args.rounds} rounds")
    print("| path | SQLite median ms | p95 | PostgreSQL median ms | p95 | status |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, lite in report["sqlite"].items():
        pg = report["postgresql"][name]
        print(
            f"| {name} | {lite['median_ms']} | {lite['p95_ms']} | {pg['median_ms']} "
            f"| {pg['p95_ms']} | {'/'.join(map(str, lite['status']))} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
