"""RFC 7591 client metadata, checked and bounded before anything is stored.

Registration is open to anyone on the network, so every part of what it keeps
is bounded: the body, the number and length of redirect URIs, the name and the
scope. A value over a limit is refused, never cut short. Metadata this server
does not use (logo_uri, contacts, ...) is ignored, as RFC 7591 2 asks, and
costs nothing beyond the body limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 16 << 10
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_NAME_LENGTH = 200
MAX_SCOPE_LENGTH = 2000
GRANT_TYPES = ("authorization_code", "refresh_token")
RESPONSE_TYPES = ("code",)


class RegistrationRefused(Exception):
    """An RFC 7591 3.2.2 error: ``invalid_redirect_uri`` or ``invalid_client_metadata``."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class PublicClientMetadata:
    name: str
    redirect_uris: list[str]
    scope: str


def public_client(metadata: Any) -> PublicClientMetadata:
    """The registration request's metadata, within the limits, or RegistrationRefused."""
    if not isinstance(metadata, dict):
        raise _metadata("The body must be a JSON object.")
    if metadata.get("token_endpoint_auth_method", "none") != "none":
        raise _metadata("Only public clients (token_endpoint_auth_method none) may register here.")
    _only(metadata, "grant_types", GRANT_TYPES)
    _only(metadata, "response_types", RESPONSE_TYPES)
    name = metadata.get("client_name") or "Unnamed app"
    scope = metadata.get("scope") or ""
    if not isinstance(name, str) or not isinstance(scope, str):
        raise _metadata("client_name and scope are strings.")
    if len(name) > MAX_NAME_LENGTH:
        raise _metadata(f"client_name is longer than {MAX_NAME_LENGTH} characters.")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise _metadata(f"scope is longer than {MAX_SCOPE_LENGTH} characters.")
    return PublicClientMetadata(name, _redirect_uris(metadata.get("redirect_uris")), scope)


def _redirect_uris(uris: Any) -> list[str]:
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise _redirect("redirect_uris must list at least one URI.")
    if len(uris) > MAX_REDIRECT_URIS:
        raise _redirect(f"redirect_uris may list at most {MAX_REDIRECT_URIS} URIs.")
    if any(len(uri) > MAX_URI_LENGTH for uri in uris):
        raise _redirect(f"A redirect URI is longer than {MAX_URI_LENGTH} characters.")
    return list(dict.fromkeys(uris))


def _only(metadata: dict[str, Any], name: str, supported: tuple[str, ...]) -> None:
    values = metadata.get(name)
    if values is None:
        return
    if (
        not isinstance(values, list)
        or len(values) > len(supported)
        or not all(isinstance(v, str) and v in supported for v in values)
    ):
        raise _metadata(f"{name} may list only {', '.join(supported)}.")


def _metadata(description: str) -> RegistrationRefused:
    return RegistrationRefused("invalid_client_metadata", description)


def _redirect(description: str) -> RegistrationRefused:
    return RegistrationRefused("invalid_redirect_uri", description)
