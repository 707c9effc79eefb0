"""All configuration, read from ``GATEWAY_*`` environment variables and ``.env``.

Bad configuration fails at start with one line naming the setting
(:func:`load_settings` turns pydantic's report into :class:`ConfigError`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting is invalid; the message names it and says what is wrong."""


class UpstreamAuth(StrEnum):
    none = "none"
    basic = "basic"
    bearer = "bearer"


class Offload(StrEnum):
    """Who moves the bytes of a WADO-RS retrieval once the gateway has said yes."""

    off = "off"  # the gateway relays them itself
    nginx = "nginx"  # nginx, told by X-Accel-Redirect (docs/deployment.md)


OFFLOAD_PREFIX = re.compile(r"/[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="The one canonical base URL clients use; every absolute link is built from it.",
    )
    data_dir: Path = Field(
        Path("./var"), description="Where the embedded store, database and keys live."
    )
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb base of the PACS (http(s)://.../dicom-web); empty: embedded store.",
    )
    upstream_auth: UpstreamAuth = UpstreamAuth.none
    upstream_username: str | None = None
    upstream_password: SecretStr | None = None
    upstream_token: SecretStr | None = None
    upstream_connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    upstream_read_timeout: Annotated[float, Field(gt=0)] = 60.0
    pacs_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        20.0,
        description=(
            "Budget for the PACS to answer a search whole, or to start a retrieval's "
            "answer; past it the client gets 503 with Retry-After."
        ),
    )
    pacs_retry_after_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        10, description="The Retry-After of that 503, in seconds."
    )
    capability_lifetime_seconds: Annotated[int, Field(ge=10, le=86400)] = Field(
        900,
        description=(
            "Longest life of a WADO-RS capability URL (never past the token or share "
            "that asked for it)."
        ),
    )
    upstream_pool_size: Annotated[int, Field(ge=1, le=256)] = 16
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; empty: SQLite file in the data folder."
    )
    local_timezone: str | None = Field(
        None,
        description=(
            "IANA zone of the PACS's local times (e.g. Europe/Paris), used when a study "
            "has no TimezoneOffsetFromUTC; without it such times are reported as dates only."
        ),
    )
    page_size: Annotated[int, Field(ge=1, le=1000)] = 20
    max_page_size: Annotated[int, Field(ge=1, le=5000)] = 200
    max_search_candidates: Annotated[int, Field(ge=10, le=100_000)] = 5000
    stow_max_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024**3
    render_max_bytes: Annotated[int, Field(ge=1024**2)] = 512 * 1024**2
    study_cache_seconds: Annotated[float, Field(ge=0)] = 300.0
    study_cache_size: Annotated[int, Field(ge=0)] = 5000
    log_level: str = "info"
    auth_required: bool = Field(
        True,
        description=(
            "Require a SMART access token on /fhir and /dicomweb. Turn off only for a "
            "gateway that is itself behind another authorization layer."
        ),
    )
    access_token_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600
    refresh_token_days: Annotated[int, Field(ge=1, le=3650)] = 90
    backend_token_seconds: Annotated[int, Field(ge=60, le=300)] = 300
    authorization_code_seconds: Annotated[int, Field(ge=10, le=600)] = 60
    session_hours: Annotated[float, Field(gt=0, le=720)] = 8.0
    dynamic_registration: bool = Field(
        True, description="Allow RFC 7591 registration of public clients at /oauth/register."
    )
    registrations_per_ip: Annotated[int, Field(ge=1, le=100_000)] = Field(
        20,
        description=(
            "Dynamic registrations (accepted or refused) one client address may ask for in "
            "15 minutes before it is told to wait (HTTP 429)."
        ),
    )
    jwks_cache_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300
    release_delay_hours: Annotated[float, Field(ge=0, le=24 * 365)] = Field(
        72.0,
        description="Hours before a new study reaches the patient (providers are never delayed).",
    )
    release_delay_by_modality: str = Field(
        "",
        description='Per-modality delays in hours, e.g. "MG=168 XA=0"; the longest applies.',
    )
    release_waiver_allowed: bool = Field(
        True, description="Let a patient choose to see new results without the delay."
    )
    share_days: Annotated[int, Field(ge=1, le=365)] = Field(
        7, description="Default lifetime of a share link, in days (the patient may choose less)."
    )
    share_max_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        90, description="The longest lifetime a patient may give a share link, in days."
    )
    secret_attempts_per_ip: Annotated[int, Field(ge=1, le=100_000)] = Field(
        30,
        description=(
            "Failed guesses of access codes, passphrases or share PINs one client address "
            "may make in 15 minutes before it is told to wait (HTTP 429)."
        ),
    )
    smtp_host: str | None = Field(
        None, description="SMTP server that mails share links; empty: links are not mailed."
    )
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_security: str = Field(
        "starttls", description="starttls (port 587), tls (implicit, port 465) or none."
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field(
        "Image Share <no-reply@localhost>", description="The From address of mailed share links."
    )
    smtp_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    apps_dir: Path | None = Field(
        None,
        description="Folder of SMART apps served at /apps; empty: the checkout's smart_apps.",
    )
    forwarded_allow_ips: str = Field(
        "",
        description=(
            "Reverse proxies (comma-separated addresses or networks, * for any) whose "
            "X-Forwarded-For and X-Forwarded-Proto are believed; empty: none, the peer "
            "address is the client's."
        ),
    )
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0,
        description=(
            "Seconds a request body may go without sending a byte before the gateway "
            "answers 408 and closes the connection."
        ),
    )
    index_freshness_seconds: Annotated[float, Field(ge=1, le=7 * 86_400)] = Field(
        60.0,
        description=(
            "How long the study index answers a patient's searches without asking the PACS; "
            "past it the next request reads the patient's studies again. A study stored "
            "through the gateway shows at once; one sent to the PACS directly, within this."
        ),
    )
    index_change_feed: Annotated[str, Field(pattern="^(|orthanc)$")] = Field(
        "",
        description=(
            "orthanc: follow Orthanc's /changes and re-read the patients whose studies "
            "changed within seconds; empty: rely on the freshness bound alone."
        ),
    )
    orthanc_url: str | None = Field(
        None,
        description=(
            "Orthanc's REST root for the change feed; empty: GATEWAY_DICOMWEB_URL without "
            "its last path segment (http://pacs:8042/dicom-web -> http://pacs:8042)."
        ),
    )
    index_feed_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        2.0, description="Seconds between two polls of the change feed."
    )
    research_sweep_seconds: Annotated[float, Field(ge=0, le=86400)] = Field(
        300.0,
        description=(
            "Seconds between two passes of research delivery in each serving process "
            "(donated studies without a delivery get a transfer job); 0: only when a "
            "donation is made, a study is stored, or `gateway research deliver` runs."
        ),
    )
    cors_origins: str = Field(
        "*",
        description="Origins allowed to call the API from a browser: * or a space-separated list.",
    )
    offload: Offload = Field(
        Offload.off,
        description=(
            "off: the gateway relays WADO-RS bytes itself; nginx: behind nginx, it decides "
            "and answers X-Accel-Redirect, and nginx fetches the bytes from the PACS."
        ),
    )
    offload_prefix: str = Field(
        "/_pacs",
        description="nginx's internal location that proxies the PACS's DICOMweb base.",
    )
    identifier_issuers: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "JSON object: FHIR identifier system -> IssuerOfPatientID, for patients named "
            "by system|value (backend access, the external authorization server's "
            "patients); a system not listed is taken as the IssuerOfPatientID itself."
        ),
    )
    external_as_issuer: str | None = Field(
        None,
        description=(
            "The EHR's SMART authorization server this gateway serves as Imaging Server "
            "for; set: bearer tokens are checked by introspection there, not issued here."
        ),
    )
    external_as_introspection_url: str | None = Field(
        None, description="Its RFC 7662 introspection endpoint."
    )
    external_as_client_id: str | None = Field(
        None, description="The gateway's client id at that server (HTTP Basic at introspection)."
    )
    external_as_client_secret: SecretStr | None = None
    external_as_authorization_url: str | None = Field(
        None, description="Its authorization endpoint, for discovery (default: {issuer}/authorize)."
    )
    external_as_token_url: str | None = Field(
        None, description="Its token endpoint, for discovery (default: {issuer}/token)."
    )
    external_as_fhir_url: str | None = Field(
        None,
        description=(
            "The EHR's FHIR base: its Patient/{id} is read (with the presented token) for "
            "the identifiers that name the patient's DICOM PatientIDs."
        ),
    )
    external_as_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        60.0,
        description=(
            "How long an active introspection answer is reused; never past the token's exp."
        ),
    )
    external_as_timeout: Annotated[float, Field(gt=0, le=60)] = Field(
        5.0, description="Seconds to wait for the authorization server (then 503)."
    )

    # -- site to site (issue 14) --------------------------------------------------
    secrets_key: SecretStr | None = Field(
        None,
        description=(
            "Base64url of 32 random bytes that seals organizations' outbound credentials "
            "(STOW secrets and bearer tokens) in the database; empty: a key file made in "
            "the data folder on first use (one machine only)."
        ),
    )
    transfer_worker: bool = Field(
        True, description="Run the transfer worker (STOW-RS pushes) inside `gateway serve`."
    )
    transfer_batch: Annotated[int, Field(ge=1, le=500)] = Field(
        10, description="Instances per STOW-RS request of a push."
    )
    transfer_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        8, description="Tries of a push before it ends as failed."
    )
    transfer_backoff_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        5.0, description="Wait after a push's first failed try; doubled after each next one."
    )
    transfer_backoff_max_seconds: Annotated[float, Field(gt=0, le=86400)] = Field(
        600.0, description="The longest wait between two tries of a push."
    )
    transfer_poll_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        2.0, description="How often an idle transfer worker looks for work."
    )
    transfer_lease_seconds: Annotated[float, Field(ge=5, le=3600)] = Field(
        60.0,
        description=(
            "How long a worker holds a push it claimed without renewing; after that "
            "another replica (or a restart) takes it over."
        ),
    )
    transfer_timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        60.0, description="Seconds to wait for an organization's STOW-RS or token endpoint."
    )

    @field_validator("public_url")
    @classmethod
    def _public_url_is_absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL such as https://images.example.org")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("dicomweb_url")
    @classmethod
    def _dicomweb_url_is_http(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) DICOMweb base such as http://pacs:8042/dicom-web")
        return value.rstrip("/")

    @field_validator(
        "external_as_issuer",
        "external_as_introspection_url",
        "external_as_authorization_url",
        "external_as_token_url",
        "external_as_fhir_url",
    )
    @classmethod
    def _external_urls_are_http(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url_is_async(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            return value
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")

    @field_validator("local_timezone")
    @classmethod
    def _timezone_exists(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("release_delay_by_modality")
    @classmethod
    def _overrides_readable(cls, value: str) -> str:
        for item in value.split():
            code, equals, hours = item.partition("=")
            try:
                ok = bool(equals) and code.isalnum() and 0 <= float(hours) <= 24 * 365
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{item!r} is not MODALITY=HOURS (e.g. MG=168 XA=0)")
        return value

    @field_validator("smtp_security")
    @classmethod
    def _smtp_security_known(cls, value: str) -> str:
        value = value.lower()
        if value not in ("starttls", "tls", "none"):
            raise ValueError("must be starttls, tls or none")
        return value

    @field_validator("offload_prefix")
    @classmethod
    def _offload_prefix_is_a_path(cls, value: str) -> str:
        value = value.rstrip("/")
        if not OFFLOAD_PREFIX.fullmatch(value):
            raise ValueError("must be a path of letters, digits, - and _ such as /_pacs")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_known(cls, value: str) -> str:
        value = value.lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError("must be one of critical, error, warning, info, debug")
        return value

    @model_validator(mode="after")
    def _upstream_credentials_present(self) -> Settings:
        if self.upstream_auth is UpstreamAuth.basic and not (
            self.upstream_username and self.upstream_password
        ):
            raise ValueError(
                "GATEWAY_UPSTREAM_AUTH=basic needs GATEWAY_UPSTREAM_USERNAME and "
                "GATEWAY_UPSTREAM_PASSWORD"
            )
        if self.upstream_auth is UpstreamAuth.bearer and not self.upstream_token:
            raise ValueError("GATEWAY_UPSTREAM_AUTH=bearer needs GATEWAY_UPSTREAM_TOKEN")
        if self.share_days > self.share_max_days:
            raise ValueError("GATEWAY_SHARE_DAYS must not exceed GATEWAY_SHARE_MAX_DAYS")
        if self.offload is Offload.nginx and self.dicomweb_url is None:
            raise ValueError(
                "GATEWAY_OFFLOAD=nginx needs GATEWAY_DICOMWEB_URL: nginx fetches from a PACS, "
                "and the embedded store is read in-process"
            )
        if self.index_change_feed and self.dicomweb_url is None:
            raise ValueError("GATEWAY_INDEX_CHANGE_FEED=orthanc needs GATEWAY_DICOMWEB_URL")
        if self.external_as_issuer and not (
            self.external_as_introspection_url
            and self.external_as_client_id
            and self.external_as_client_secret
        ):
            raise ValueError(
                "GATEWAY_EXTERNAL_AS_ISSUER needs GATEWAY_EXTERNAL_AS_INTROSPECTION_URL, "
                "GATEWAY_EXTERNAL_AS_CLIENT_ID and GATEWAY_EXTERNAL_AS_CLIENT_SECRET"
            )
        if self.page_size > self.max_page_size:
            raise ValueError("GATEWAY_PAGE_SIZE must not exceed GATEWAY_MAX_PAGE_SIZE")
        return self

    @property
    def fhir_base_url(self) -> str:
        return f"{self.public_url}/fhir"

    @property
    def dicomweb_base_url(self) -> str:
        return f"{self.public_url}/dicomweb"

    @property
    def oauth_base_url(self) -> str:
        return f"{self.public_url}/oauth"

    @property
    def external_as(self) -> bool:
        """Is the gateway the Imaging Server of an external authorization server?"""
        return bool(self.external_as_issuer)

    @property
    def dicom_dir(self) -> Path:
        return self.data_dir / "dicom"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def uses_embedded_store(self) -> bool:
        return self.dicomweb_url is None


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        location = "_".join(str(part) for part in first["loc"])
        name = f"GATEWAY_{location.upper()}" if location else "configuration"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
