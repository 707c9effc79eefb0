"""SMART scopes (App Launch 2.2 section 3): parse v1 and v2, decide, narrow.

    (patient|user|system)/(Type|*).(v2 letters in order: c r u d s)[?param=value&...]
    (patient|user|system)/(Type|*).(read|write|*)        v1: read = rs, write = cud
    admin/enrollments                                    gateway staff API (backend clients)
    admin/research                                       research projects API (backend clients)
    admin/transfers                                      staff: send studies to organizations

Scope strings are kept exactly as requested and granted; decisions use the
parsed form. Pure functions only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXT_SCOPES = frozenset(
    {
        "launch",
        "launch/patient",
        "launch/encounter",
        "openid",
        "fhirUser",
        "profile",
        "offline_access",
        "online_access",
    }
)
# Staff scopes: only backend clients pre-authorised for them receive them
# (client_credentials); the authorization endpoint never accepts them from an app.
ADMIN_SCOPES = frozenset({"admin/enrollments", "admin/research", "admin/transfers"})
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_LETTERS = re.compile(r"c?r?u?d?s?")
_RESOURCE_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{1,63})"
    r"\.(?P<permissions>[a-z*]{1,5})(?:\?(?P<query>[^\s]+))?"
)
PERMISSION_WORDS = {
    "c": "create",
    "r": "read",
    "u": "update",
    "d": "delete",
    "s": "search",
}


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope: who it speaks for, which type, which actions, which filter."""

    text: str
    context: str
    resource_type: str
    permissions: frozenset[str]
    filters: tuple[tuple[str, str], ...] = ()
    v1: bool = False

    def covers(self, resource_type: str, action: str) -> bool:
        return self.resource_type in ("*", resource_type) and action in self.permissions

    def implies(self, other: ResourceScope) -> bool:
        """Does holding this scope already allow everything ``other`` allows?"""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
            and set(self.filters) <= set(other.filters)
        )


def parse(text: str) -> ResourceScope | None:
    """The resource scope ``text`` names, or None when it is not a resource scope."""
    found = _RESOURCE_SCOPE.fullmatch(text)
    if not found:
        return None
    letters = found["permissions"]
    if letters in V1_PERMISSIONS:
        permissions, v1 = V1_PERMISSIONS[letters], True
    elif _V2_LETTERS.fullmatch(letters) and letters:
        permissions, v1 = letters, False
    else:
        return None
    filters: tuple[tuple[str, str], ...] = ()
    if found["query"]:
        if v1:
            return None  # granular filters exist only in the v2 grammar
        pairs = parse_qsl(found["query"], keep_blank_values=False, strict_parsing=False)
        if not pairs:
            return None
        filters = tuple(sorted(pairs))
    return ResourceScope(
        text=text,
        context=found["context"],
        resource_type=found["type"],
        permissions=frozenset(permissions),
        filters=filters,
        v1=v1,
    )


def split(scope: str | None) -> list[str]:
    """Space-separated scope strings, deduplicated, in order."""
    return list(dict.fromkeys((scope or "").split()))


def backend_scopes(registered: str) -> list[str]:
    """What a backend client may receive of its pre-authorised scopes: system/ and staff."""
    return [s for s in split(registered) if s.startswith("system/") or s in ADMIN_SCOPES]


def is_known(text: str) -> bool:
    return text in CONTEXT_SCOPES or text in ADMIN_SCOPES or parse(text) is not None


@dataclass(frozen=True)
class Access:
    """What a grant allows for one resource type and action.

    ``allowed`` False: nothing. Otherwise ``filters`` lists the alternatives
    (ORed) a resource must match; an empty tuple inside means unfiltered.
    """

    allowed: bool
    filters: tuple[tuple[tuple[str, str], ...], ...] = ()

    @property
    def unfiltered(self) -> bool:
        return self.allowed and any(not f for f in self.filters)


def decide(
    granted: Iterable[str], contexts: Iterable[str], resource_type: str, action: str
) -> Access:
    """May a grant of ``granted`` perform ``action`` (c r u d s) on ``resource_type``?"""
    wanted = set(contexts)
    matching = [
        s
        for s in (parse(text) for text in granted)
        if s is not None and s.context in wanted and s.covers(resource_type, action)
    ]
    if not matching:
        return Access(False)
    return Access(True, tuple(s.filters for s in matching))


def narrow(original: Iterable[str], requested: Iterable[str]) -> list[str] | None:
    """``requested`` if every scope in it is held in ``original`` (or implied); else None."""
    held = list(original)
    held_resources = [s for s in (parse(t) for t in held) if s is not None]
    result = []
    for text in requested:
        if text in held:
            result.append(text)
            continue
        wanted = parse(text)
        if wanted is None or not any(h.implies(wanted) for h in held_resources):
            return None
        result.append(text)
    return result


def describe(text: str) -> str:
    """The scope in plain words, for the consent page."""
    plain = {
        "launch": "Use the patient and context the EHR opened the app with",
        "launch/patient": "Know which patient you are",
        "openid": "Confirm who you are",
        "fhirUser": "Confirm who you are (your patient or practitioner record)",
        "profile": "See your name",
        "offline_access": "Keep access when you are not using the app (until you revoke it)",
        "online_access": "Keep access while you are signed in",
        "launch/encounter": "Know the current encounter",
        "admin/enrollments": "Enrol patients: give them an access code and a letter to print",
        "admin/research": "Manage research projects, their deliveries and download packages",
        "admin/transfers": "Send patients' studies to other organizations, and see the transfers",
    }
    if text in plain:
        return plain[text]
    scope = parse(text)
    if scope is None:
        return text
    whose = {"patient": "your", "user": "the", "system": "all"}[scope.context]
    kind = "records" if scope.resource_type == "*" else _words(scope.resource_type)
    actions = [PERMISSION_WORDS[p] for p in "cruds" if p in scope.permissions]
    sentence = f"{' and '.join(actions).capitalize()} {whose} {kind}"
    if scope.filters:
        sentence += " where " + ", ".join(f"{k} is {v}" for k, v in scope.filters)
    return sentence


def _words(resource_type: str) -> str:
    known = {
        "ImagingStudy": "imaging studies (images)",
        "DocumentReference": "reports and documents",
        "Patient": "patient details",
        "Endpoint": "image service addresses",
        "Binary": "document files",
        "Practitioner": "practitioner details",
    }
    return known.get(resource_type, re.sub(r"(?<!^)([A-Z])", r" \1", resource_type).lower())
