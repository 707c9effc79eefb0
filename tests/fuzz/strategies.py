"""Hypothesis strategies for requests to any route of the gateway.

The route table comes from the app itself (``route_table``), so a route added
tomorrow is fuzzed without touching this file. Values mix what a client might
plausibly send (real UIDs, ids, tokens) with what breaks parsers: other
scripts' digits, NULs, line breaks, huge numbers, traversal, very long text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import quote

from hypothesis import strategies as st
from starlette.routing import BaseRoute, Mount, Route

from gateway.audit import SEARCH_PARAMETERS as AUDIT_SEARCH
from gateway.dicomweb import qido
from gateway.fhir import consents, documents, params, patients, studies

PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-z]+))?}")


@dataclass(frozen=True)
class RouteInfo:
    """One route: its full path template, methods and the kind of each path parameter."""

    template: str
    methods: tuple[str, ...]
    params: tuple[tuple[str, str], ...]  # (name, convertor)

    @property
    def area(self) -> str:
        first = self.template.strip("/").split("/", 1)[0]
        if self.template.startswith("/fhir/.well-known") or first == ".well-known":
            return "discovery"
        if first in ("healthz", "readyz", "metrics"):
            return "operations"
        return first


def weighted(routes: list[RouteInfo]) -> list[RouteInfo]:
    """Searches (FHIR and QIDO) parse the most parameters: they get three times the share."""
    return [
        route
        for route in routes
        for _ in range(3 if route.area in ("fhir", "dicomweb") and not route.params else 1)
    ]


def route_table(routes: list[BaseRoute], prefix: str = "") -> list[RouteInfo]:
    """Every route, Mounts walked recursively; a Mount without routes (static files) as
    ``{path:path}`` under its prefix."""
    found: list[RouteInfo] = []
    for route in routes:
        if isinstance(route, Mount):
            inner = route.routes
            if inner:
                found.extend(route_table(list(inner), prefix + route.path))
            else:
                found.append(
                    RouteInfo(prefix + route.path + "/{path:path}", ("GET",), (("path", "path"),))
                )
        elif isinstance(route, Route):
            template = prefix + route.path
            methods = tuple(sorted(m for m in (route.methods or {"GET"}) if m != "HEAD"))
            found.append(
                RouteInfo(
                    template,
                    methods,
                    tuple((m.group(1), m.group(2) or "str") for m in PARAM.finditer(template)),
                )
            )
    return found


NUMERIC = {"_count", "_offset", "limit", "offset", "quality", "image", "page", "days", "frame"}

# -- the names each area knows -------------------------------------------------------

FHIR_NAMES = sorted(
    set(params.COMMON)
    | set(studies.SEARCH_PARAMETERS)
    | set(documents.SEARCH_PARAMETERS)
    | set(patients.SEARCH_PARAMETERS)
    | set(consents.SEARCH_PARAMETERS)
    | set(AUDIT_SEARCH)
    | {"_elements", "_lastUpdated", "_has", "page", "identifier:exact", "date:missing"}
)
DICOMWEB_NAMES = sorted(
    set(qido.CONTROL)
    | {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "Modality",
        "0020000D",
        "00100020",
        "ReferencedSOPSequence.ReferencedSOPClassUID",
        "window",
        "quality",
        "viewport",
        "annotation",
        "image",
    }
)
OAUTH_NAMES = [
    "grant_type", "code", "redirect_uri", "code_verifier", "client_id", "client_secret",
    "client_assertion_type", "client_assertion", "refresh_token", "scope", "token",
    "token_type_hint", "response_type", "state", "aud", "code_challenge",
    "code_challenge_method", "launch", "nonce", "request", "csrf_token", "mode", "access_code",
    "birth_date", "passphrase", "username", "password", "decision", "duration", "studies",
    "study",
]  # fmt: skip
PORTAL_NAMES = [
    "csrf_token", "mode", "access_code", "birth_date", "passphrase", "study", "days", "label",
    "email", "image", "page", "series", "withdrawn", "pin", "request", "accept", "window",
    "quality",
]  # fmt: skip
JSON_NAMES = [
    "patient", "identifier", "birthDate", "name", "user", "fhirContext", "need_patient_banner",
    "intent", "redirect_uris", "client_name", "token_endpoint_auth_method", "scope",
    "grant_types", "response_types", "jwks", "jwks_uri", "software_id", "logo_uri",
]  # fmt: skip
NAMES = {
    "fhir": FHIR_NAMES,
    "dicomweb": DICOMWEB_NAMES,
    "oauth": OAUTH_NAMES,
    "portal": PORTAL_NAMES,
    "share": PORTAL_NAMES,
    "admin": JSON_NAMES,
}


def _interesting_first(names: list[str]) -> list[str]:
    # Hypothesis favours the start of a sampled list: numbers first, format switches last
    # (a random _format or accept only earns a 406).
    def rank(name: str) -> int:
        return 0 if name in NUMERIC else 2 if name in ("_format", "accept") else 1

    return sorted(names, key=rank)


# Text that has broken, or could break, a parser somewhere.
NASTY = [
    "²", "①", "١٢", "\uff11\uff10", "٣", "߁", "\U0001d7d7", "Ⅻ", "½", "\x00", "a\x00b", "\n",
    "\r\n",
    "x\r\nSet-Cookie: a=b", "\t", "\x7f", "\u2028", "\ud7ff", "\ufeff1", "\u202e", "é", "ß",
    "山田", "💥", "../../../etc/passwd", "..%2f..%2fetc", "%00", "%", "%zz", "*", "?", "\\",
    "'", '"', "<script>alert(1)</script>", "${jndi:x}", "-1", "0", "-0", "+1", "00", "1e9",
    "NaN", "inf", "99999999999999999999999999999999", "18446744073709551616", "0x10", "1.5",
    "", " ", ",", ",,", "|", "a|b|c", "eq2020", "ge2020-01-01", "lt9999-12-31", "2020-13-45",
    "2020-02-30T25:61:61Z", "19700101-", "-19700101", "true", "false", "null", "[]", "{}",
    "1.2.840.10008.1.2", "1.2..3", "1." * 40, "0.0", "*.*", "ImagingStudy:subject",
    "ImagingStudy:*", "started", "-started", "count", "application/dicom",
    "multipart/related; type=application/dicom", "image/png", "text/html", "*/*",
    "1,2,3", "40,400", "40,400,sigmoid", "0,0", "a,b", "-1,-1", "1e308,1e308",
]  # fmt: skip

# str.isdigit() is true for all of these; int() fails on the first six and reads the others
# (other scripts' digits) as numbers.
DIGITS = ["²", "①", "¹²", "5²", "③", "2⁰", "١٢", "\uff11\uff10", "໑"]
MAX_URL = 60_000
LONG = ["9" * 5000, "a" * 20000, "²" * 2000, "1." * 5000, "/" * 3000]


@dataclass
class Pools:
    """Real values the fuzz draws from beside the nasty ones (UIDs, ids, tokens...)."""

    by_name: dict[str, list[str]] = field(default_factory=dict)
    anywhere: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    dicom_parts: list[bytes] = field(default_factory=list)


def values(pools: Pools, name: str = "") -> st.SearchStrategy[str]:
    choices: list[st.SearchStrategy[str]] = [
        st.sampled_from(NASTY),
        st.sampled_from(DIGITS),
        st.text(max_size=40),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.from_regex(
            r"(eq|ne|gt|ge|lt|le|sa|eb|ap)?[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?", fullmatch=True
        ),
        st.sampled_from(LONG),
        st.tuples(st.sampled_from(NASTY), st.sampled_from(NASTY)).map("".join),
    ]
    if pools.anywhere:
        choices.append(st.sampled_from(pools.anywhere))
    if pools.by_name.get(name):
        choices.extend([st.sampled_from(pools.by_name[name])] * 3)
    if name.split(":")[0] in NUMERIC:
        choices.extend([st.sampled_from(DIGITS)] * 4)
    return st.one_of(choices)


@st.composite
def pairs(
    draw: st.DrawFn, pools: Pools, known: list[str], max_size: int
) -> list[tuple[str, str | None]]:
    """Parameters: mostly names the area knows (some with modifiers), each with a value
    drawn for that name; a name without a value now and then."""
    modifiers = st.sampled_from([":exact", ":missing", ":contains", ":not", ":text", ":", ".x"])
    name = st.one_of(
        st.sampled_from(known),
        st.sampled_from(known),
        st.tuples(st.sampled_from(known), modifiers).map("".join),
        st.text(max_size=12),
        st.sampled_from(NASTY),
    )
    drawn: list[tuple[str, str | None]] = []
    for key in draw(st.lists(name, max_size=max_size)):
        drawn.append((key, draw(st.none() | values(pools, key) | values(pools, key))))
    return drawn


@st.composite
def path_value(draw: st.DrawFn, pools: Pools, name: str, convertor: str) -> str:
    """A path parameter, already percent-encoded (``path`` parameters may keep slashes)."""
    raw = draw(values(pools, name))
    if convertor == "path":
        encoded = "/".join(quote(part, safe="") for part in raw.split("/"))
        extra = draw(st.sampled_from(["", "/", "/%2e%2e/%2e%2e/etc/passwd", "/metadata"]))
        encoded += extra
    else:
        encoded = quote(raw, safe="")
    # The router answers an empty segment itself; keep one character so routes match.
    return encoded or "%20"


@st.composite
def query_string(draw: st.DrawFn, pools: Pools, area: str) -> str:
    parts = []
    for key, value in draw(pairs(pools, _interesting_first(NAMES.get(area) or ["q"]), 6)):
        encoded = quote(key, safe="")
        parts.append(encoded if value is None else f"{encoded}={quote(value, safe='')}")
    return "&".join(parts)


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=60,
)
ACCEPTS = [
    "*/*", "application/fhir+json", "application/json", "application/fhir+xml", "text/html",
    "application/dicom+json", 'multipart/related; type="application/dicom"',
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
    'multipart/related; type="application/octet-stream"', "image/jpeg", "image/png",
    "image/gif", "application/pdf", "text/plain", "application/zip", "image/*;q=0", ";;;,,",
    "text/html;q=abc", "application/json;q=0.5, text/html;q=0.9", "*/*;q=0",
]  # fmt: skip
CONTENT_TYPES = [
    "application/x-www-form-urlencoded", "application/json", "application/fhir+json",
    "multipart/form-data; boundary=XyZ",
    'multipart/related; type="application/dicom"; boundary=XyZ',
    "multipart/related; boundary=XyZ", 'multipart/related; type="application/dicom"',
    "text/plain", "application/dicom", "application/x-www-form-urlencoded; charset=utf-16",
    "multipart/related; type=application/dicom; boundary=", "", ";",
]  # fmt: skip


@dataclass
class Body:
    content: bytes
    content_type: str | None


@st.composite
def body(draw: st.DrawFn, pools: Pools, area: str, csrf: str | None) -> Body | None:
    kind = draw(
        st.sampled_from(
            [
                "none",
                "bytes",
                "json",
                "form",
                "form",
                "many-fields",
                "huge-field",
                "multipart",
                "stow",
            ]
        )
    )
    names = NAMES.get(area, OAUTH_NAMES)
    if kind == "none":
        return None
    if kind == "bytes":
        return Body(draw(st.binary(max_size=512)), draw(st.sampled_from(CONTENT_TYPES) | st.none()))
    if kind == "json":
        leaf = st.none() | st.booleans() | st.integers() | st.floats() | values(pools)
        document = st.recursive(
            leaf,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(JSON_NAMES) | st.text(max_size=8), inner, max_size=5
                )
            ),
            max_leaves=12,
        )
        top = st.dictionaries(st.sampled_from(JSON_NAMES), document, max_size=6) | document
        return Body(
            json.dumps(draw(top), allow_nan=True).encode(),
            draw(
                st.sampled_from(
                    ["application/json", "application/json", "application/fhir+json", "text/plain"]
                )
            ),
        )
    if kind in ("form", "many-fields", "huge-field"):
        fields = [(k, v or "") for k, v in draw(pairs(pools, names, 8))]
        if csrf is not None:
            fields.append(("csrf_token", csrf))
        if kind == "many-fields":
            fields += [(f"f{i}", "x") for i in range(draw(st.integers(60, 400)))]
        if kind == "huge-field":
            fields.append((draw(st.sampled_from(names)), "x" * ((1 << 20) + 1)))
        encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields)
        return Body(
            encoded.encode(),
            draw(st.sampled_from(["application/x-www-form-urlencoded"] * 4 + CONTENT_TYPES)),
        )
    if kind == "multipart":
        parts = draw(st.lists(st.tuples(st.sampled_from(names), values(pools)), max_size=4))
        if csrf is not None:
            parts.append(("csrf_token", csrf))
        content = b"".join(
            b'--XyZ\r\nContent-Disposition: form-data; name="'
            + k.encode("utf-8", "replace")
            + b'"\r\n\r\n'
            + v.encode("utf-8", "replace")
            + b"\r\n"
            for k, v in parts
        ) + draw(st.sampled_from([b"--XyZ--\r\n", b"", b"--XyZ"]))
        return Body(content, "multipart/form-data; boundary=XyZ")
    # stow: a multipart/related body of DICOM-ish parts, whole, cut short or garbage
    part_bodies = []
    for _ in range(draw(st.integers(0, 3))):
        if pools.dicom_parts and draw(st.booleans()):
            whole = draw(st.sampled_from(pools.dicom_parts))
            part_bodies.append(
                whole[: draw(st.integers(0, len(whole)))] if draw(st.booleans()) else whole
            )
        else:
            part_bodies.append(draw(st.binary(max_size=300)))
    part_type = draw(
        st.sampled_from([b"application/dicom", b"application/dicom+json", b"text/plain", b""])
    )
    content = b"".join(
        b"--XyZ\r\nContent-Type: " + part_type + b"\r\n\r\n" + part + b"\r\n"
        for part in part_bodies
    ) + draw(st.sampled_from([b"--XyZ--\r\n", b"", b"--XyZ--"]))
    return Body(
        content,
        draw(
            st.sampled_from(
                [
                    'multipart/related; type="application/dicom"; boundary=XyZ',
                    "multipart/related; boundary=XyZ",
                    'multipart/related; type="application/dicom"',
                ]
            )
        ),
    )


@dataclass
class FuzzRequest:
    route: RouteInfo
    method: str
    path: str
    headers: list[tuple[str, str]]
    identity: str  # which cookie jar: none, portal, share
    body: Body | None

    def describe(self) -> str:
        shown = self.body.content[:300] if self.body else b""
        size = len(self.body.content) if self.body else 0
        return (
            f"{self.method} {self.path[:600]}\n"
            f"  headers: {self.headers!r}\n"
            f"  cookies: {self.identity}\n"
            f"  body ({size} bytes): {shown!r}"
        )


@st.composite
def request_for(
    draw: st.DrawFn, route: RouteInfo, pools: Pools, csrf: dict[str, str]
) -> FuzzRequest:
    method = draw(
        st.sampled_from(route.methods)
        | st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        if draw(st.integers(0, 9)) == 0
        else st.sampled_from(route.methods)
    )
    path = route.template
    for name, convertor in route.params:
        path = path.replace(
            "{" + name + (":" + convertor if convertor != "str" else "") + "}",
            draw(path_value(pools, name, convertor)),
            1,
        )
    if draw(st.integers(0, 14)) == 0:
        path += draw(st.sampled_from(["/", "//", "/%00", "/x"]))
    query = draw(query_string(pools, route.area)) if draw(st.integers(0, 3)) else ""
    if query:
        # httpx refuses URLs over 64 KiB; a server in front would refuse far less.
        path = (path + "?" + query)[:MAX_URL]
    headers: list[tuple[str, str]] = []
    if draw(st.sampled_from([True, False, False])):
        headers.append(("Accept", draw(st.sampled_from(ACCEPTS) | HEADER_TEXT)))
    # Mostly the credential the area takes, so requests get past the gates to the parsers.
    api = route.area in ("fhir", "dicomweb", "admin")
    authorization = draw(st.sampled_from(["pool"] * (6 if api else 1) + ["none", "garbage"]))
    if authorization == "pool" and pools.authorizations:
        usable = pools.authorizations if route.area == "admin" else pools.authorizations[:-1]
        headers.append(("Authorization", draw(st.sampled_from(usable))))
    elif authorization == "garbage":
        scheme = draw(st.sampled_from(["Bearer ", "Basic ", "bearer ", "Bearer  x", ""]))
        headers.append(("Authorization", scheme + draw(HEADER_TEXT)))
    if draw(st.integers(0, 4)) == 0:
        headers.append(
            (
                "Prefer",
                draw(
                    st.sampled_from(["handling=strict", "handling=lenient", "return=minimal"])
                    | HEADER_TEXT
                ),
            )
        )
    if draw(st.integers(0, 6)) == 0:
        headers.append(
            (
                "X-Forwarded-For",
                draw(st.sampled_from(["1.2.3.4", "::1, 10.0.0.1", "999.1.1.1", ""]) | HEADER_TEXT),
            )
        )
    if draw(st.integers(0, 9)) == 0:
        headers.append(
            (
                "Range",
                draw(
                    st.sampled_from(["bytes=0-10", "bytes=-1", "bytes=9999999999-"]) | HEADER_TEXT
                ),
            )
        )
    jar = route.area if route.area in ("portal", "share") else "none"
    identity = draw(st.sampled_from([jar] * 4 + ["none", "portal", "share"]))
    # The session's CSRF token goes in forms, except to those that end or replace the
    # session (sign-out, close, sign-in) or lock the opened link (its PIN form).
    ends_session = route.template.endswith(("/signout", "/close", "/signin", "/share/{token}"))
    token = None if ends_session or identity == "none" else csrf.get(identity)
    sent = (
        draw(body(pools, route.area, token))
        if method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 9)) == 0
        else None
    )
    if (
        sent is not None
        and sent.content_type is not None
        and not any(h[0] == "Content-Type" for h in headers)
    ):
        headers.append(("Content-Type", sent.content_type))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Content-Type", draw(st.sampled_from(CONTENT_TYPES) | HEADER_TEXT)))
    return FuzzRequest(route, method, path, [(k, _latin1(v)) for k, v in headers], identity, sent)
