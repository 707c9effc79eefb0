"""Any DICOMweb PACS, through dicomweb-client's ``DICOMwebClient``.

One pooled ``requests`` session per process; each blocking call runs in
anyio's worker threads under a limiter sized to that pool, so a slow PACS
queues requests instead of exhausting threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from requests.adapters import HTTPAdapter

from gateway.dicomweb.dicomjson import DicomJson, text
from gateway.dicomweb.upstream import StoreResult
from gateway.errors import (
    NotFound,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.settings import Settings, UpstreamAuth

logger = logging.getLogger(__name__)
T = TypeVar("T")


class HttpUpstream:
    name = "dicomweb"

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        concurrency: int = 16,
    ) -> None:
        self.url = url.rstrip("/")
        self._session = session or requests.Session()
        self._client = DICOMwebClient(url=self.url, session=self._session, timeout=timeout)
        # Its retries back off for ~30 s, even on a refused connection. A gateway
        # answers at once (503 + Retry-After) and lets its client decide.
        self._client.set_http_retry_params(retry=False)
        self._limiter = anyio.CapacityLimiter(concurrency)

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
        )

    async def _call(self, function: Callable[[], T], *, missing_is_empty: bool = False) -> T:
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
            if status in (404, 410) and missing_is_empty:
                return []  # type: ignore[return-value]
            if status == 404:
                raise NotFound("Not found in the image archive.") from None
            if status == 503:
                raise UpstreamUnavailable("The image archive is unavailable.") from None
            if status == 504:
                raise UpstreamTimeout("The image archive timed out.") from None
            logger.warning("upstream answered HTTP %s for %s", status, exc.request.url)
            raise UpstreamBadResponse(f"The image archive answered HTTP {status}.") from None
        except (ValueError, KeyError, TypeError) as exc:
            # dicomweb-client raises these for bodies that are not DICOM JSON.
            logger.warning("upstream sent an unreadable answer: %s", exc)
            raise UpstreamBadResponse("The image archive sent an unreadable answer.") from None

    async def _search(
        self,
        search: Callable[..., list[DicomJson]],
        filters: Mapping[str, str],
        fields: Sequence[str],
        limit: int | None,
    ) -> list[DicomJson]:
        def run() -> list[DicomJson]:
            return search(
                search_filters=dict(filters) or None,
                fields=list(fields) or None,
                limit=limit,
            )

        results = await self._call(run, missing_is_empty=True)
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise UpstreamBadResponse("The image archive sent an unreadable answer.")
        return results

    async def search_studies(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search(self._client.search_for_studies, filters, fields, limit)

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search(self._client.search_for_series, filters, fields, limit)

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._search(self._client.search_for_instances, filters, fields, limit)

    async def store_instances(self, datasets: Sequence[Dataset]) -> StoreResult:
        def run() -> Any:
            return self._client.store_instances(datasets=list(datasets))

        response = await self._call(run)
        return parse_store_response(response, datasets)

    async def check(self) -> None:
        await self._call(lambda: self._client.search_for_studies(limit=1))

    async def aclose(self) -> None:
        self._session.close()


def parse_store_response(response: Any, datasets: Sequence[Dataset]) -> StoreResult:
    """Read a PS3.18 STOW response (a pydicom Dataset from dicomweb-client)."""
    result = StoreResult()
    if not isinstance(response, Dataset):
        result.stored = [str(ds.SOPInstanceUID) for ds in datasets]
        return result
    as_json = response.to_json_dict()
    for item in as_json.get("00081199", {}).get("Value", []):
        uid = text(item, "ReferencedSOPInstanceUID")
        if uid:
            result.stored.append(uid)
    for item in as_json.get("00081198", {}).get("Value", []):
        uid = text(item, "ReferencedSOPInstanceUID") or "?"
        reason = item.get("00081197", {}).get("Value", ["?"])[0]
        result.failed[uid] = f"failure reason {reason}"
    return result
