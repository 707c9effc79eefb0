"""What the per-request token check costs, on SQLite and on PostgreSQL.

    .venv/bin/python bench/token_check.py [--rounds 3000] [--postgres URL] [--json out.json]

For each database: migrates a fresh one, issues 1,000 tokens (so the table
is not trivially small), then times ``TokenService.check`` on random issued
tokens, ``--rounds`` times, and reports p50/p95 (target: p50 <= 1 ms). It
also times a whole request through the token gate (in-process ASGI, GET
/fhir/Endpoint/dicomweb) with and without a token, so the gate's share of a
request is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import DEFAULT_POSTGRES, on_both_databases, with_state  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.auth.clients import ClientKind  # noqa: E402
from gateway.services import Services  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)] * 1000, 3),
    }


async def measure(url: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    settings = load_settings(
        _env_file=None, data_dir=data_dir, database_url=url, auth_required=True
    )
    database = Database(url)
    await database.upgrade()
    await database.dispose()
    services = Services.build(settings)
    tokens = []
    operator = await services.auth.clients.add(
        name="bench",
        kind=ClientKind.backend,
        jwks={"keys": []},
        scope="system/*.rs",
        operator=True,
    )
    for _ in range(1000):
        answer = await services.auth.tokens.client_credentials(
            operator.client.client_id, ["system/*.rs"]
        )
        tokens.append(answer["access_token"])
    check = services.auth.tokens.check
    for token in tokens[:50]:  # warm the pool
        await check(token)
    samples = []
    for _ in range(rounds):
        token = random.choice(tokens)
        started = time.perf_counter()
        found = await check(token)
        samples.append(time.perf_counter() - started)
        assert found is not None
    result: dict[str, Any] = {"check": percentiles(samples)}

    app = create_app(settings, services=services, check_migrations=False)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app) as state:
        # ASGITransport does not run the lifespan; hand its state to each request.
        transport = httpx.ASGITransport(app=with_state(app, state))
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as client:
            with_token, open_route = [], []
            headers = {"Authorization": f"Bearer {tokens[0]}"}
            for _ in range(rounds // 3):
                started = time.perf_counter()
                response = await client.get("/fhir/Endpoint/dicomweb", headers=headers)
                with_token.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                started = time.perf_counter()
                response = await client.get("/fhir/metadata")
                open_route.append(time.perf_counter() - started)
    result["request_with_token"] = percentiles(with_token)
    result["open_request_metadata"] = percentiles(open_route)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument(
        "--postgres", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = await on_both_databases(measure, args.rounds, args.postgres)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
