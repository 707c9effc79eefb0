"""Tables of what the gateway owns. The PACS stays the source of truth for images."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class PatientRecord(Base):
    """A stable opaque FHIR id for each (issuer of patient id, PatientID).

    The MRN must never appear in a URL, and the same MRN from two issuers is
    two people, so the pair is the key and the id is random.
    """

    __tablename__ = "patient_index"
    __table_args__ = (UniqueConstraint("issuer", "patient_id", name="uq_patient_index_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(128), default="")
    patient_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- authorization server (SMART App Launch) ---------------------------------
# Every piece of OAuth state lives here, so any number of gateway processes
# on one database agree on codes, tokens, revocations, sessions and lockouts.


class OAuthClient(Base):
    """A registered app. ``kind``: public, confidential-symmetric,
    confidential-asymmetric or backend. Secrets are stored as argon2id hashes."""

    __tablename__ = "oauth_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    launch_uri: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    jwks_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    ehr: Mapped[bool] = mapped_column(Boolean, default=False)
    dynamic: Mapped[bool] = mapped_column(Boolean, default=False)
    # A backend client's system/ scopes reach every patient only when it is an operator;
    # otherwise only its pre-authorized access (PreauthorizedAccess), and what was
    # shared with its organization.
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    organization_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Account(Base):
    """Someone who signs in: a patient (by access code) or a practitioner (by username).

    A patient's ``login`` is the 8-digit access code; the secret is unset until
    the patient activates with code and birth date and chooses a passphrase.
    """

    __tablename__ = "account"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # patient | practitioner
    login: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    patient_fhir_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    birth_date: Mapped[str | None] = mapped_column(String(10), nullable=True)
    secret_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BrowserSession(Base):
    """A signed-in browser (or a share recipient past the PIN). The cookie holds a
    random id; only its hash is stored."""

    __tablename__ = "browser_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A share-link recipient who entered the right PIN: no account, one share.
    share_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PendingAuthorization(Base):
    """A checked authorization request waiting for sign-in and consent, bound to a browser."""

    __tablename__ = "pending_authorization"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Grant(Base):
    """What a user (or a backend client) allowed one app: the root of its tokens."""

    __tablename__ = "oauth_grant"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuthorizationCode(Base):
    __tablename__ = "oauth_code"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str | None] = mapped_column(String(500), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Less than the grant's scope when the code reuses a grant; NULL: the grant's scope.
    scope: Mapped[str | None] = mapped_column(Text, nullable=True)


class Token(Base):
    """An access or refresh token, by the SHA-256 of its value (the value is never stored)."""

    __tablename__ = "oauth_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # access | refresh
    client_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LaunchContext(Base):
    """An EHR launch: created by the EHR, redeemed once by the app within minutes."""

    __tablename__ = "launch_context"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(64))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SeenAssertion(Base):
    """The jti of each client assertion until it expires: replays are refused everywhere."""

    __tablename__ = "seen_assertion"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SigningKey(Base):
    """A key the server signs id_tokens with. Retired keys are published until
    ``publish_until``, when every token they signed has expired."""

    __tablename__ = "signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    publish_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRecord(Base):
    """One audited action, written before the answer leaves (IHE BALP-shaped when served)."""

    __tablename__ = "audit_event"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    category: Mapped[str] = mapped_column(String(32))  # rest | dicomweb | login | token | consent
    action: Mapped[str] = mapped_column(String(64))  # read, search, retrieve, store, issue, ...
    outcome: Mapped[int] = mapped_column(Integer)  # HTTP-like status of the action
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    study: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    # Why: HL7 v3 ActReason (PATRQT the patient's own or their share, TREAT a provider,
    # HOPERAT a backend system); None when no token was required.
    purpose: Mapped[str | None] = mapped_column(String(16), nullable=True)


class StudyRelease(Base):
    """A study released to its patient ahead of the delay, by staff."""

    __tablename__ = "study_release"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    released_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_by: Mapped[str] = mapped_column(String(128), default="")


class DelayWaiver(Base):
    """A patient who chose to see new results at once, where the policy allows it."""

    __tablename__ = "delay_waiver"

    patient_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    waived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShareLink(Base):
    """Studies a patient shared with someone who has no account (Image Share phase 2).

    The link carries a 256-bit token (kept as SHA-256) and opens only with a separate
    6-digit PIN (kept as argon2id); five wrong PINs lock the link for good.
    """

    __tablename__ = "share_link"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    pin_hash: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_fhir_id: Mapped[str] = mapped_column(String(64), index=True)
    studies: Mapped[list[str]] = mapped_column(JSON, default=list)
    label: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_pins: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PreauthorizedAccess(Base):
    """One patient, or one study of a patient, that a backend client or an organization
    may see (SMART Imaging Access, Backend Services mode).

    ``holder_kind`` is ``client`` (a client_id, local or the external authorization
    server's) or ``organization``. A row without ``study_uid`` is the whole patient.
    The patient is kept by its key (issuer, PatientID) and its FHIR id, both fixed
    when the access is given.
    """

    __tablename__ = "preauthorized_access"
    __table_args__ = (
        UniqueConstraint(
            "holder_kind",
            "holder_id",
            "issuer",
            "patient_id",
            "study_uid",
            name="uq_preauthorized_access",
        ),
        Index("ix_preauthorized_access_holder", "holder_kind", "holder_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    holder_kind: Mapped[str] = mapped_column(String(16))
    holder_id: Mapped[str] = mapped_column(String(128))
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(128), default="")
    patient_id: Mapped[str] = mapped_column(String(128))
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AttemptWindow(Base):
    """Failed secret guesses from one client address on one surface, per window.

    Shared through the database so that every replica counts the same guesses.
    """

    __tablename__ = "attempt_window"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    failures: Mapped[int] = mapped_column(Integer, default=0)


# -- the study index (issue 12) ---------------------------------------------
# What the PACS said of each patient's studies at the last revalidation, so that
# searches inside the freshness bound are answered without asking it. Every
# replica reads and writes the same rows; nothing of it is kept per process.


class IndexedPatient(Base):
    """When a patient's studies were last read from the PACS.

    ``revalidated_at`` None: read them again before answering. ``generation`` grows
    whenever something says the patient's studies changed (a STOW through the
    gateway, the PACS's change feed), so a revalidation that began before the
    change does not mark the patient fresh.
    """

    __tablename__ = "study_index_patient"

    issuer: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    revalidated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class IndexedStudy(Base):
    """One study of one patient: its study-level QIDO record and its report rows.

    Keyed by patient and study, so a study UID that a PACS files under two
    patients stays two rows, each seen only by its own patient.
    """

    __tablename__ = "study_index"
    __table_args__ = (Index("ix_study_index_study", "study_uid"),)

    issuer: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    record: Mapped[str] = mapped_column(Text)  # DICOM JSON (orjson)
    reports: Mapped[str] = mapped_column(Text, default="[]")  # instance-level QIDO rows
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StudyDetailRecord(Base):
    """The instances of a study (instance-level QIDO, the FHIR mapping's fields),
    valid while the PACS still counts the same series and instances."""

    __tablename__ = "study_detail"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_count: Mapped[int] = mapped_column(Integer)
    instance_count: Mapped[int] = mapped_column(Integer)
    instances: Mapped[str] = mapped_column(Text)  # DICOM JSON list (orjson)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class IndexFeed(Base):
    """A PACS change feed's cursor, and which replica holds the lease to poll it."""

    __tablename__ = "study_index_feed"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# -- research donation (issue 14, phase 3) -----------------------------------


class ResearchProject(Base):
    """A research project patients may donate studies to. ``secret`` is the project's
    pseudonym key (base64 of 48 random bytes): as sensitive as the data, never shown.
    Delivery goes to ``archive_url`` (STOW-RS) or, without one, to a download area."""

    __tablename__ = "research_project"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    protocol_id: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    archive_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    archive_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[list[str]] = mapped_column(JSON, default=list)
    accept_burned_in: Mapped[bool] = mapped_column(Boolean, default=False)
    secret: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ResearchConsent(Base):
    """A patient's donation to a project: one study, or (``study_uid`` empty) all their
    studies, future ones included. Withdrawn, it stops future deliveries."""

    __tablename__ = "research_consent"
    __table_args__ = (Index("ix_research_consent_patient", "patient_fhir_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(128), default="")
    patient_id: Mapped[str] = mapped_column(String(128))
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    withdrawn_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class ResearchDelivery(Base):
    """One study's de-identified copy going to (or gone to) one project's archive."""

    __tablename__ = "research_delivery"
    __table_args__ = (
        UniqueConstraint(
            "project_id", "consent_id", "study_uid", name="uq_research_delivery_study"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    consent_id: Mapped[str] = mapped_column(String(64))
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    pseudonymous_study_uid: Mapped[str] = mapped_column(String(64))
    patient_pseudonym: Mapped[str] = mapped_column(String(64), default="")
    # A delivery to an archive is a transfer job (``job_id``): its status, counts and
    # error are the job's. A download package's row has no job: ``delivered`` here.
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    sent: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# -- site to site (issue 14) --------------------------------------------------


class Organization(Base):
    """A site that receives studies: by pulling (its backend client, ``oauth_client`` with
    ``organization_id`` = this id) and/or by a DICOMweb STOW-RS endpoint we push to.

    ``stow_secret`` is sealed (JWE, ``gateway.auth.secrets.seal``): the static bearer
    token, or the OAuth client secret, never stored or logged in clear.
    """

    __tablename__ = "organization"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    identifiers: Mapped[list[str]] = mapped_column(JSON, default=list)  # "system|value"
    stow_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    stow_auth: Mapped[str] = mapped_column(String(16), default="none")  # none|bearer|oauth
    token_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    oauth_client_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    oauth_scope: Mapped[str | None] = mapped_column(String(500), nullable=True)
    stow_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OrganizationSend(Base):
    """A patient's consent that an organization receive chosen studies (FHIR Consent
    ``org-{id}``): its backend client may pull them until expiry or revocation, and a
    push job may carry them to its STOW-RS endpoint. ``sent_by`` is empty when the
    patient sent them; otherwise the staff client that did, with ``reason``."""

    __tablename__ = "organization_send"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_fhir_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(128), default="")
    patient_id: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    studies: Mapped[list[str]] = mapped_column(JSON, default=list)
    sent_by: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TransferJob(Base):
    """A background push of studies by STOW-RS, claimed by one worker at a time.

    ``status``: queued, running, done, partial (some instances refused), failed (with
    ``last_error``) or cancelled (its consent withdrawn). A worker holds it while
    ``lease_until`` is ahead; a crashed worker's job is taken over when it lapses.
    ``transform`` names a registered per-instance transform (``identity`` by default).
    """

    __tablename__ = "transfer_job"
    __table_args__ = (Index("ix_transfer_job_due", "status", "next_try_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(32), default="organization")
    target_id: Mapped[str] = mapped_column(String(64))
    send_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    patient_fhir_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    studies: Mapped[list[str]] = mapped_column(JSON, default=list)
    transform: Mapped[str] = mapped_column(String(64), default="identity")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[int] = mapped_column(Integer, default=0)  # left out by the transform
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TransferItem(Base):
    """One instance of a push that the receiver answered for: stored (acknowledged, never
    sent again) or refused (PS3.18 Failed SOP Sequence, with its reason)."""

    __tablename__ = "transfer_item"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16))  # stored | refused
    reason: Mapped[str] = mapped_column(String(200), default="")


# -- capability URLs (SMART Imaging Access: requires-access-token = false) ---


class WadoCapability(Base):
    """A bearer capability URL's permission: read-only DICOMweb of some studies of some
    patients, until ``expires_at`` (never later than what authorized it). The URL
    carries a 256-bit secret; only its SHA-256 is kept. It ends early with its
    ``revoked_at``, or with the grant or share link it came from (revoking any token of
    a grant revokes the grant, RFC 7009 as the gateway does it)."""

    __tablename__ = "wado_capability"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # [[issuer, PatientID], ...] and [StudyInstanceUID, ...]
    patients: Mapped[list[list[str]]] = mapped_column(JSON)
    studies: Mapped[list[str]] = mapped_column(JSON)
    reports: Mapped[bool] = mapped_column(Boolean, default=False)
    patient_fhir_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the issuer's
    grant_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    share_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
