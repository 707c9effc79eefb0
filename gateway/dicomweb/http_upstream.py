"""Any DICOMweb PACS.

QIDO-RS searches, WADO-RS retrieval and STOW of encoded instances go through
one pooled ``httpx.AsyncClient`` on the event loop. dicomweb-client's
``DICOMwebClient`` (a pooled ``requests`` session, its blocking calls in
anyio's worker threads under a limiter sized to that pool) remains for STOW
of pydicom datasets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import httpcore
import httpx
import orjson
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from requests.adapters import HTTPAdapter

from gateway.dicomweb.dicomjson import DicomJson, text
from gateway.dicomweb.stow import multipart_request
from gateway.dicomweb.upstream import Retrieved, StoreResult
from gateway.errors import (
    BadRequest,
    NotAcceptable,
    NotFound,
    UpstreamBadResponse,
    UpstreamIncomplete,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.settings import Settings, UpstreamAuth

logger = logging.getLogger(__name__)
T = TypeVar("T")
BOUNDARY = re.compile(r'boundary\s*=\s*"?([^";,\s]+)"?', re.IGNORECASE)
# httpcore reads a body 64 KiB at a time, and each read is a trip through h11, httpcore,
# anyio and the event loop. Reads of up to 256 KiB (what asyncio's transport hands over
# at once) took the share ZIP's gateway CPU from about 3.2 to 2.6 seconds per GB
# (bench/share_download.py). httpcore has no setting for it but this class attribute.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 256 << 10
# What may follow the closing delimiter of a multipart answer (RFC 2046's epilogue;
# archives send none, or a CRLF).
EPILOGUE = 1 << 10


class HttpUpstream:
    name = "dicomweb"

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        concurrency: int = 16,
        budget: float | None = None,
        retry_after: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        # How long a search's whole answer, or a retrieval's first line and headers, may
        # take: past it the client gets 503 + Retry-After rather than a held connection.
        self._budget = budget
        self._retry_after = retry_after
        self._session = session or requests.Session()
        self._client = DICOMwebClient(url=self.url, session=self._session, timeout=timeout)
        # Its retries back off for ~30 s, even on a refused connection. A gateway
        # answers at once (503 + Retry-After) and lets its client decide.
        self._client.set_http_retry_params(retry=False)
        self._limiter = anyio.CapacityLimiter(concurrency)
        # WADO bodies are relayed as bytes: dicomweb-client would parse whole
        # instances into memory, so retrieval uses an async client that streams.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout[1], connect=timeout[0]),
            limits=httpx.Limits(max_connections=concurrency),
            auth=_httpx_auth(self._session),
            # Identity encoding: the body is relayed raw, so it must not arrive compressed.
            headers={"Accept-Encoding": "identity", **_auth_headers(self._session)},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpUpstream:
        assert settings.dicomweb_url is not None
        session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=settings.upstream_pool_size, pool_maxsize=settings.upstream_pool_size
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if settings.upstream_auth is UpstreamAuth.basic:
            assert settings.upstream_username and settings.upstream_password
            session.auth = (
                settings.upstream_username,
                settings.upstream_password.get_secret_value(),
            )
        elif settings.upstream_auth is UpstreamAuth.bearer:
            assert settings.upstream_token
            session.headers["Authorization"] = (
                f"Bearer {settings.upstream_token.get_secret_value()}"
            )
        return cls(
            settings.dicomweb_url,
            session=session,
            timeout=(settings.upstream_connect_timeout, settings.upstream_read_timeout),
            concurrency=settings.upstream_pool_size,
            budget=settings.pacs_timeout_seconds,
            retry_after=settings.pacs_retry_after_seconds,
        )

    async def _call(self, function: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(function, limiter=self._limiter)
        except requests.exceptions.ConnectTimeout:
            raise UpstreamUnavailable("The image archive did not accept a connection.") from None
        except requests.exceptions.Timeout:
            raise UpstreamTimeout("The image archive did not answer in time.") from None
        except requests.exceptions.ConnectionError:
            raise UpstreamUnavailable("The image archive is unreachable.") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status not in (404, 503, 504):
                logger.warning("upstream answered HTTP %s for %s", status, exc.request.url)
            raise _search_error(status) from None
        except (ValueError, KeyError, TypeError) as exc:
            # dicomweb-client raises these for bodies that are not DICOM JSON.
            logger.warning("upstream sent an unreadable answer: %s", exc)
            raise UpstreamBadResponse("The image archive sent an unreadable answer.") from None

    async def _search(
        self, resource: str, filters: Mapping[str, str], fields: Sequence[str], limit: int | None
    ) -> list[DicomJson]:
        """One QIDO-RS query, on the event loop over the pooled async client (the one WADO
        uses): the query string, Accept header and answers are read as dicomweb-client
        did, without a worker thread and the requests stack per call."""
        request = self._http.build_request(
            "GET",
            f"{self.url}/{resource}{_query_string(filters, fields, limit)}",
            headers={"Accept": "application/dicom+json, application/json"},
        )
        # requests followed redirects; a PACS behind one answers the same way.
        response = await self._send(request, stream=False, follow_redirects=True)
        status = response.status_code
        if status in (404, 410):
            return []  # nothing matched, in some archives' words
        if status >= 400:
            if status not in (503, 504):
                logger.warning("upstream answered HTTP %s for %s", status, request.url)
            raise _search_error(status)
        if "warning" in response.headers:  # PS3.18 6.7.1.2: maybe not all results
            logger.warning(response.headers["warning"])
        if not response.content:
            return []
        try:
            results = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            logger.warning("upstream sent an unreadable answer: %s", exc)
            raise UpstreamBadResponse("The image archive sent an unreadable answer.") from None
        if isinstance(results, dict):  # some archives send one data set bare
            results = [results]
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise UpstreamBadResponse("The image archive sent an unreadable answer.")
        return results

    async def search_studies(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search("studies", filters, fields, limit)

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search("series", filters, fields, limit)

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search("instances", filters, fields, limit)

    async def store_instances(self, datasets: Sequence[Dataset]) -> StoreResult:
        def run() -> Any:
            return self._client.store_instances(datasets=list(datasets))

        response = await self._call(run)
        return parse_store_response(response, datasets)

    async def store_encoded(self, parts: Sequence[bytes]) -> StoreResult:
        body, content_type = multipart_request(parts)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        request = self._http.build_request(
            "POST", f"{self.url}/studies", content=body, headers=headers
        )
        response = await self._send(request, stream=False, budget=False)  # uploads take long
        if response.status_code not in (200, 202, 409):
            raise _retrieve_error(response.status_code, "")
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            raise UpstreamBadResponse("The image archive sent an unreadable STOW answer.") from None
        if isinstance(answer, list):
            answer = answer[0] if answer else {}
        return _store_result(answer)

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        request = self._http.build_request("GET", f"{self.url}/{path}", headers={"Accept": accept})
        response = await self._send(request, stream=True)
        if response.status_code >= 400:
            await response.aclose()
            raise _retrieve_error(response.status_code, accept)
        media_type = response.headers.get("content-type", "application/octet-stream")
        # Relayed as received: re-chunking would copy every byte once more.
        return Retrieved(media_type, _whole(response, media_type, path), response.aclose)

    async def _send(
        self,
        request: httpx.Request,
        *,
        stream: bool,
        follow_redirects: bool = False,
        budget: bool = True,
    ) -> httpx.Response:
        slow = UpstreamTimeout("The image archive did not answer in time.", self._retry_after)
        try:
            with anyio.fail_after(self._budget if budget else None):
                return await self._http.send(
                    request, stream=stream, follow_redirects=follow_redirects
                )
        except TimeoutError:  # the budget
            logger.warning("the image archive did not answer within %ss", self._budget)
            raise slow from None
        except httpx.ConnectTimeout:
            raise UpstreamUnavailable("The image archive did not accept a connection.") from None
        except httpx.TimeoutException:
            raise slow from None
        except httpx.TransportError:
            raise UpstreamUnavailable("The image archive is unreachable.") from None

    async def check(self) -> None:
        await self._search("studies", {}, (), 1)

    async def aclose(self) -> None:
        self._session.close()
        await self._http.aclose()


async def _whole(response: httpx.Response, media_type: str, path: str) -> AsyncIterator[bytes]:
    """The body as it arrives, ending in UpstreamIncomplete unless it came whole.

    A PACS that ends its body by closing the connection (Orthanc does) looks, when
    it dies mid-answer, like one that finished: only the closing multipart boundary
    (or, for JSON, the closing bracket) tells them apart. A short Content-Length or
    chunked body, and a connection lost mid-body, surface from httpx as errors.
    """
    found = BOUNDARY.search(media_type) if media_type.lower().startswith("multipart/") else None
    closing = f"--{found.group(1)}--".encode("latin-1") if found else None
    is_json = media_type.lower().startswith(("application/dicom+json", "application/json"))
    # The closing delimiter is looked for in the body's last bytes only (it may be
    # followed by an epilogue of up to EPILOGUE bytes), not in every chunk: a scan of
    # every byte was 3-4% of the gateway's CPU on a share ZIP (perf, bench/share_download.py).
    keep = len(closing) + EPILOGUE if closing else 0
    last, tail, failure = b"", b"", ""
    try:
        async for chunk in response.aiter_raw():
            if keep:
                tail = (tail + chunk[-keep:])[-keep:]
            if is_json and (stripped := chunk.rstrip()):
                last = stripped[-1:]
            yield chunk
    except httpx.TransportError as exc:  # RemoteProtocolError, ReadError, ReadTimeout
        failure = type(exc).__name__
    if not failure and closing is not None and closing not in tail:
        failure = "no closing boundary"
    elif not failure and is_json and last != b"]":
        failure = "unterminated JSON"
    if failure:
        logger.error("the image archive ended its answer early (%s): %s", failure, path)
        raise UpstreamIncomplete("The image archive ended its answer early.")


def _auth_headers(session: requests.Session) -> dict[str, str]:
    return {k: str(v) for k, v in session.headers.items() if k.lower() == "authorization"}


def _httpx_auth(session: requests.Session) -> httpx.BasicAuth | None:
    if isinstance(session.auth, tuple) and len(session.auth) == 2:
        return httpx.BasicAuth(str(session.auth[0]), str(session.auth[1]))
    return None


def _query_string(filters: Mapping[str, str], fields: Sequence[str], limit: int | None) -> str:
    """As dicomweb-client wrote it: keys sorted, values quote_plus'd, includefield repeated."""
    params: dict[str, Any] = dict(filters)
    if limit is not None:
        params["limit"] = limit
    if fields:
        params["includefield"] = sorted(set(fields))
    return ("?" + urlencode(sorted(params.items()), doseq=True)) if params else ""


def _search_error(status: int) -> Exception:
    if status == 404:
        return NotFound("Not found in the image archive.")
    if status == 503:
        return UpstreamUnavailable("The image archive is unavailable.")
    if status == 504:
        return UpstreamTimeout("The image archive timed out.")
    return UpstreamBadResponse(f"The image archive answered HTTP {status}.")


def _retrieve_error(status: int, accept: str) -> Exception:
    if status in (404, 410):
        return NotFound("Not found in the image archive.")
    if status == 406 or (status >= 500 and "transfer-syntax=" in accept and "=*" not in accept):
        # Archives answer an impossible transcoding with 406 or, like Orthanc, with 500.
        return NotAcceptable("The archive cannot provide the requested transfer syntax.")
    if status == 400:
        return BadRequest("The archive refused the request.")
    if status == 503:
        return UpstreamUnavailable("The image archive is unavailable.")
    if status == 504:
        return UpstreamTimeout("The image archive timed out.")
    return UpstreamBadResponse(f"The image archive answered HTTP {status}.")


def parse_store_response(response: Any, datasets: Sequence[Dataset]) -> StoreResult:
    """Read a PS3.18 STOW response (a pydicom Dataset from dicomweb-client)."""
    if not isinstance(response, Dataset):
        return StoreResult(stored=[str(ds.SOPInstanceUID) for ds in datasets])
    return _store_result(response.to_json_dict())


def _store_result(as_json: dict[str, Any]) -> StoreResult:
    """Referenced and failed SOP instances of a STOW answer in DICOM JSON."""
    result = StoreResult()
    for item in as_json.get("00081199", {}).get("Value", []):
        uid = text(item, "ReferencedSOPInstanceUID")
        if uid:
            result.stored.append(uid)
    for item in as_json.get("00081198", {}).get("Value", []):
        uid = text(item, "ReferencedSOPInstanceUID") or "?"
        reason = item.get("00081197", {}).get("Value", ["?"])[0]
        result.failed[uid] = f"failure reason {reason}"
    return result
