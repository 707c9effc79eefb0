"""A STOW-RS receiver for push tests: a real HTTP server (uvicorn in a thread) that
counts every instance it is sent, can be down (503), can hold a request unanswered
(to kill the sender in the middle of a push), refuses chosen instances in a PS3.18
Failed SOP Sequence, and can demand an OAuth token from its own token URL."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from pydicom import dcmread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.dicomweb.instances import Parts
from tests.conftest import free_port

CLIENT_ID, CLIENT_SECRET = "gateway-a", "s3cret-for-tests"


@dataclass
class Receiver:
    down: bool = False
    down_after: int | None = None  # go down once this many instances were received
    stall_after: int | None = None  # hold requests unread once this many were received
    stalled: int = 0  # requests held so far
    refuse: set[str] = field(default_factory=set)
    oauth: bool = False
    received: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def token(self, request: Request) -> Response:
        form = await request.form()
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if (
            request.headers.get("authorization") != f"Basic {expected}"
            or form.get("grant_type") != "client_credentials"
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        self.tokens_issued += 1
        return JSONResponse({"access_token": f"t{self.tokens_issued}", "expires_in": 300})

    async def stow(self, request: Request) -> Response:
        if self.down_after is not None and sum(self.received.values()) >= self.down_after:
            self.down = True
        if self.down:
            return Response(status_code=503)
        if self.stall_after is not None and sum(self.received.values()) >= self.stall_after:
            self.stalled += 1
            while self.stall_after is not None:  # until the test lets go; nothing is read
                await asyncio.sleep(0.05)
            return Response(status_code=503)
        if self.oauth and not request.headers.get("authorization", "").startswith("Bearer t"):
            return Response(status_code=401)
        parts = Parts(request.headers["content-type"])
        bodies, current = [], bytearray()
        async for chunk in request.stream():
            for piece in parts.feed(chunk):
                if piece is None:
                    bodies.append(bytes(current))
                    current = bytearray()
                else:
                    current += piece
        parts.finish()
        stored, failed = [], []
        import io

        for body in bodies:
            uid = str(dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
            self.received[uid] += 1
            item = {"00081155": {"vr": "UI", "Value": [uid]}}
            if uid in self.refuse:
                failed.append({**item, "00081197": {"vr": "US", "Value": [272]}})
            else:
                stored.append(item)
        answer = {"00081199": {"vr": "SQ", "Value": stored}}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        return JSONResponse(answer, status_code=202 if failed else 200)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/dicom-web/studies", self.stow, methods=["POST"]),
            ]
        )


class Running:
    def __init__(self, receiver: Receiver) -> None:
        config = uvicorn.Config(receiver.app(), port=receiver.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
