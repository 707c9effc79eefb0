"""``/oauth/authorize``, sign-in, consent and EHR launch (SMART App Launch 2.2, RFC 6749 4.1).

An unknown client or a redirect URI that is not exactly registered gets an
error page and never a redirect; every other error goes back to the app with
``error``, ``error_description`` and the unchanged ``state``. The request,
once checked, waits in the database for sign-in and consent, bound to the
browser session.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import forms
from gateway.audit import AuditEntry
from gateway.auth import jacket, scopes
from gateway.auth.accounts import AccountError
from gateway.auth.attempts import TooManyAttempts, client_address
from gateway.auth.client_auth import bearer_token
from gateway.auth.clients import ClientKind
from gateway.auth.sessions import COOKIE, PendingGone, csrf_ok
from gateway.authorization import patient_access
from gateway.services import Services
from gateway.store.models import Account, BrowserSession, OAuthClient

logger = logging.getLogger(__name__)
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
ANSWERED = "This request was answered already (the form was sent twice?)."
SIGN_IN_FAILED = "The sign-in details are not right, or the account is locked for a while."
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # form-action must allow the app's redirect: browsers apply it to the redirect after a post.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Redirectable(Exception):
    """An error the app hears about at its redirect URI (RFC 6749 4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description


def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(
        templates.get_template(name).render(**values), status_code=status, headers=PAGE_HEADERS
    )


def error_page(message: str, status: int = 400) -> HTMLResponse:
    return page("error.html", status, message=message)


def redirect_to_app(redirect_uri: str, params: dict[str, str]) -> RedirectResponse:
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return RedirectResponse(
        f"{redirect_uri}{separator}{urlencode(params)}", status_code=302, headers=NO_CACHE
    )


NO_CACHE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
LAUNCH_BODY_BYTES = 64 << 10


def same_audience(aud: str, fhir_base: str) -> bool:
    """``aud`` names this FHIR server: scheme and host compared without case, a trailing
    slash ignored."""

    def normal(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")

    return bool(aud) and normal(aud) == normal(fhir_base)


async def authorize(request: Request) -> Response:
    services: Services = request.state.services
    params = dict(request.query_params)
    if request.method == "POST":
        form = await forms.read_form(request, max_fields=64, max_bytes=forms.PAGE_FORM_BYTES)
        params = {k: v for k, v in form.items() if isinstance(v, str)}
    client = await services.auth.clients.get(params.get("client_id", ""))
    if client is None:
        return error_page("The app is not registered with this server.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in (client.redirect_uris or []):
        return error_page("The app's return address is not the one it registered.")
    state = params.get("state")
    try:
        checked = await check_request(services, client, params)
    except Redirectable as exc:
        answer = {"error": exc.error, "error_description": exc.description}
        if state is not None:
            answer["state"] = state
        return redirect_to_app(redirect_uri, answer)
    browser, cookie = await _browser(request, services)
    account = await services.auth.accounts.get(browser.account_id or "")
    prompt = set(params.get("prompt", "").split())
    # OpenID Connect Core 3.1.2.1: prompt=none shows no page; it answers at once.
    if "none" in prompt:
        if len(prompt) > 1:
            answer = {"error": "invalid_request", "error_description": "prompt=none stands alone."}
        elif account is None:
            answer = {"error": "login_required", "error_description": "Nobody is signed in."}
        elif (reused := await reuse_grant(services, client, account, checked)) is not None:
            return reused
        else:
            answer = {
                "error": "consent_required",
                "error_description": "No live grant covers this request.",
            }
        return redirect_to_app(redirect_uri, {**answer, "state": checked["state"]})
    if account is not None and not prompt & {"login", "consent", "select_account"}:
        reused = await reuse_grant(services, client, account, checked)
        if reused is not None:
            return reused
    request_id = await services.auth.browser_sessions.save_pending(browser, checked)
    target = "consent" if account is not None and "login" not in prompt else "signin"
    response = RedirectResponse(
        f"{services.settings.oauth_base_url}/{target}?request={request_id}",
        status_code=303,
        headers=NO_CACHE,
    )
    if cookie:
        _set_cookie(response, services, cookie)
    return response


async def reuse_grant(
    services: Services, client: OAuthClient, account: Account, pending: dict[str, Any]
) -> Response | None:
    """The app's code at once, on a live grant of this person's that covers the request.

    Covered: everything this person could grant of what the app asks is held by the
    grant (the same scopes, or narrower ones), and the context the request brings
    (who the user is, the patient, and for an EHR launch its fhirContext and intent)
    is the grant's own. The code is for what was asked now; no new grant is made, so
    the patient's app list and revoking stay as they were. None: ask (consent page).
    """
    offered = offered_scopes(account, pending)
    if not offered:
        return None
    fresh = _context(services, account, pending, offered)
    compared = ["fhirUser", "patient"] + (
        ["fhirContext", "intent"] if pending.get("launch") else []
    )
    tokens = services.auth.tokens
    for grant in await tokens.live_grants(client.client_id, account.id):
        context = grant.context or {}
        if any(context.get(name) != fresh.get(name) for name in compared):
            continue
        if scopes.narrow(scopes.split(grant.scope), offered) is None:
            continue
        audited = AuditEntry(
            category="consent",
            action="reuse",
            outcome=200,
            client_id=client.client_id,
            user=context.get("fhirUser"),
            patient=context.get("patient") or account.patient_fhir_id,
            detail=f"scope: {' '.join(offered)}; the grant of {grant.created_at:%Y-%m-%d} holds it",
        )
        code = await tokens.reuse_code(
            grant,
            scope=offered,
            redirect_uri=pending["redirect_uri"],
            code_challenge=pending["code_challenge"],
            nonce=pending.get("nonce"),
            also=(services.audit.adding(audited),),
        )
        if code is not None:
            return redirect_to_app(
                pending["redirect_uri"], {"code": code, "state": pending["state"]}
            )
    return None


async def check_request(
    services: Services, client: OAuthClient, params: dict[str, str]
) -> dict[str, Any]:
    """The authorization request, checked; Redirectable errors otherwise."""
    if params.get("response_type") != "code":
        raise Redirectable("unsupported_response_type", "response_type must be code.")
    if client.kind == ClientKind.backend:
        raise Redirectable("unauthorized_client", "Backend clients cannot launch.")
    if not params.get("state"):
        raise Redirectable("invalid_request", "state is required.")
    if not same_audience(params.get("aud", ""), services.settings.fhir_base_url):
        raise Redirectable("invalid_request", "aud must be this server's FHIR base URL.")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or not 43 <= len(challenge) <= 128:
        raise Redirectable("invalid_request", "PKCE is required: code_challenge with S256.")
    requested = [
        s
        for s in scopes.split(params.get("scope"))
        if scopes.is_known(s) and s not in scopes.ADMIN_SCOPES  # staff scopes: backend only
    ]
    launch_context: dict[str, Any] | None = None
    if params.get("launch"):
        launch_context = await services.auth.launches.redeem(params["launch"])
        if launch_context is None:
            raise Redirectable("invalid_request", "The launch is unknown, used or expired.")
    if not requested:
        raise Redirectable("invalid_scope", "No scope this server knows was requested.")
    return {
        "client_id": client.client_id,
        "redirect_uri": params["redirect_uri"],
        "state": params["state"],
        "scope": requested,
        "code_challenge": challenge,
        "nonce": params.get("nonce"),
        "launch": launch_context,
    }


async def _browser(request: Request, services: Services) -> tuple[BrowserSession, str | None]:
    sessions = services.auth.browser_sessions
    found = await sessions.load(request.cookies.get(COOKIE))
    if found is not None:
        return found, None
    cookie, started = await sessions.start()
    return started, cookie


def _set_cookie(response: Response, services: Services, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(services.settings.session_hours * 3600),
        path="/oauth",
        secure=services.settings.public_url.startswith("https://"),
        httponly=True,
        samesite="lax",
    )


async def _pending(
    request: Request, services: Services, request_id: str
) -> tuple[BrowserSession | None, dict[str, Any] | None]:
    browser = await services.auth.browser_sessions.load(request.cookies.get(COOKIE))
    if browser is None:
        return None, None
    return browser, await services.auth.browser_sessions.pending(browser, request_id)


async def signin(request: Request) -> Response:
    services: Services = request.state.services
    if request.method == "GET":
        request_id = request.query_params.get("request", "")
        browser, pending = await _pending(request, services, request_id)
        if browser is None or pending is None:
            return error_page("The sign-in request has expired or belongs to another browser.")
        return await _signin_page(services, browser, pending, request_id)
    form = await forms.read_form(request, max_fields=16, max_bytes=forms.PAGE_FORM_BYTES)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    request_id = fields.get("request", "")
    browser, pending = await _pending(request, services, request_id)
    if browser is None or pending is None:
        return error_page("The sign-in request has expired or belongs to another browser.")
    if not csrf_ok(browser, fields.get("csrf_token")):
        return error_page("The form was not sent from this server's page.")
    attempts, address = services.auth.attempts, client_address(request)
    # Taken with the account's try in one transaction: then a known access code costs no
    # more database work than an unknown one.
    first = attempts.taking("sign-in", address)
    accounts = services.auth.accounts
    account: Account | None = None
    mode = fields.get("mode")
    try:
        if mode == "activate":
            account = await accounts.activate(
                fields.get("access_code", "").strip(),
                fields.get("birth_date", "").strip(),
                fields.get("passphrase", ""),
                first=first,
            )
        elif mode == "practitioner":
            account = await accounts.sign_in(
                fields.get("username", "").strip(), fields.get("password", ""), first=first
            )
            account = account if account and account.kind == "practitioner" else None
        else:
            account = await accounts.sign_in(
                fields.get("access_code", "").strip(), fields.get("passphrase", ""), first=first
            )
            account = account if account and account.kind == "patient" else None
    except TooManyAttempts as exc:
        answer = await _signin_page(services, browser, pending, request_id, exc.advice, 429)
        answer.headers["Retry-After"] = str(exc.retry_after)
        return answer
    except AccountError as exc:
        return await _signin_page(services, browser, pending, request_id, str(exc), 400)
    await audit_sign_in(services, account, mode or "patient")
    if account is None:
        return await _signin_page(services, browser, pending, request_id, SIGN_IN_FAILED, 401)
    await attempts.give_back("sign-in", address)
    cookie, _ = await services.auth.browser_sessions.sign_in(browser, account.id)
    response = RedirectResponse(
        f"{services.settings.oauth_base_url}/consent?request={request_id}",
        status_code=303,
        headers=NO_CACHE,
    )
    _set_cookie(response, services, cookie)
    return response


async def _signin_page(
    services: Services,
    browser: BrowserSession,
    pending: dict[str, Any],
    request_id: str,
    error: str | None = None,
    status: int = 200,
) -> Response:
    client = await services.auth.clients.get(pending["client_id"])
    return page(
        "signin.html",
        status,
        client_name=client.name if client else "the app",
        csrf_token=browser.csrf_token,
        request_id=request_id,
        action=f"{services.settings.oauth_base_url}/signin",
        error=error,
    )


def offered_scopes(account: Account, pending: dict[str, Any]) -> list[str]:
    """What this person can grant of what the app asked."""
    launch = pending.get("launch") or {}
    has_patient = account.kind == "patient" or bool(launch.get("patient"))
    offered = []
    for text in pending["scope"]:
        parsed = scopes.parse(text)
        if parsed is None:
            if text == "launch" and not launch:
                continue
            if text == "launch/patient" and not has_patient:
                continue
            offered.append(text)
        elif parsed.context == "patient" and has_patient:
            offered.append(text)
        elif parsed.context == "user" and account.kind == "practitioner":
            offered.append(text)
    return offered


async def consent(request: Request) -> Response:
    services: Services = request.state.services
    if request.method == "GET":
        request_id = request.query_params.get("request", "")
        fields: dict[str, Any] = {}
    else:
        form = await forms.read_form(
            request, max_fields=jacket.MAX_STUDIES + 128, max_bytes=forms.PAGE_FORM_BYTES
        )
        fields = {
            name: [v for v in form.getlist(name) if isinstance(v, str)]
            for name in ("scope", "study")
        }
        fields.update(
            {k: v for k, v in form.items() if isinstance(v, str) and k not in ("scope", "study")}
        )
        request_id = fields.get("request", "")
    browser, pending = await _pending(request, services, request_id)
    if browser is None or pending is None:
        return error_page("The request has expired or belongs to another browser.")
    account = await services.auth.accounts.get(browser.account_id or "")
    if account is None:
        return RedirectResponse(
            f"{services.settings.oauth_base_url}/signin?request={request_id}", status_code=303
        )
    client = await services.auth.clients.get(pending["client_id"])
    if client is None:
        return error_page("The app is no longer registered.")
    offered = offered_scopes(account, pending)
    # A patient chooses which studies, and for how long (the RSNA Image Share jacket).
    studies = (
        jacket.lines(
            await services.records.studies.jacket(
                await patient_access(services, account.patient_fhir_id or "")
            )
        )
        if account.kind == "patient"
        else None
    )
    if request.method == "GET":
        return page(
            "consent.html",
            client_name=client.name,
            user_name=account.display_name or f"access code …{account.login[-4:]}",
            permissions=[(s, scopes.describe(s)) for s in offered],
            jacket=studies,
            durations=[(k, label) for k, (label, _) in jacket.DURATIONS.items()],
            csrf_token=browser.csrf_token,
            request_id=request_id,
            action=f"{services.settings.oauth_base_url}/consent",
        )
    if not csrf_ok(browser, fields.get("csrf_token")):
        return error_page("The form was not sent from this server's page.")
    # The request is consumed only together with its answer (a grant and its code, or a
    # refusal) and that answer's audit record: in one transaction, or not at all.
    sessions = services.auth.browser_sessions
    state = pending["state"]

    async def refused(description: str, *audited: AuditEntry) -> Response:
        if not await sessions.drop_pending(request_id, services.audit.adding(*audited)):
            return error_page(ANSWERED)
        return redirect_to_app(
            pending["redirect_uri"],
            {"error": "access_denied", "error_description": description, "state": state},
        )

    if fields.get("decision") != "approve":
        return await refused(
            "The user said no.",
            AuditEntry(
                category="consent",
                action="deny",
                outcome=403,
                client_id=client.client_id,
                patient=account.patient_fhir_id,
            ),
        )
    ticked = set(fields.get("scope", []))
    granted = [s for s in offered if s in ticked]
    if not granted:
        return await refused("Nothing was allowed.")
    context = _context(services, account, pending, granted)
    if studies is not None:
        chosen = _chosen_studies(fields, studies)
        if chosen is None:
            return await refused("No study was chosen.")
        if chosen != "all":
            context["studies"] = chosen
            context["fhirContext"] = [{"reference": f"ImagingStudy/{uid}"} for uid in chosen]
        duration = fields.get("duration", "revoke")
        until = jacket.consent_until(duration if duration in jacket.DURATIONS else "revoke")
        if until:
            context["consent_until"] = until
    chosen_studies = context.get("studies")
    audited = AuditEntry(
        category="consent",
        action="grant",
        outcome=200,
        client_id=client.client_id,
        user=context.get("fhirUser"),
        patient=context.get("patient") or account.patient_fhir_id,
        detail=f"scope: {' '.join(granted)}; studies: "
        + (", ".join(chosen_studies) if isinstance(chosen_studies, list) else "all")
        + (f"; until {context['consent_until']}" if context.get("consent_until") else ""),
    )
    try:
        code = await services.auth.tokens.create_code(
            client_id=client.client_id,
            account_id=account.id,
            scope=granted,
            context=context,
            redirect_uri=pending["redirect_uri"],
            code_challenge=pending["code_challenge"],
            nonce=pending.get("nonce"),
            also=(sessions.consuming(request_id), services.audit.adding(audited)),
        )
    except PendingGone:
        return error_page(ANSWERED)
    return redirect_to_app(pending["redirect_uri"], {"code": code, "state": state})


async def audit_sign_in(services: Services, account: Account | None, mode: str) -> None:
    """Sign-ins, good and bad, are audited; a failure names nobody (no enumeration)."""
    await services.audit.record(
        AuditEntry(
            category="login",
            action="activate" if mode == "activate" else "sign-in",
            outcome=200 if account else 401,
            user=account.id if account else None,
            patient=account.patient_fhir_id if account else None,
            detail="" if account else "failed sign-in",
        )
    )


def _chosen_studies(
    fields: dict[str, Any], studies: list[jacket.JacketStudy]
) -> list[str] | str | None:
    """ "all", the ticked studies that are the patient's own, or None when none was ticked.
    A study still held back by the release delay cannot be ticked."""
    if fields.get("studies", "all") != "selected":
        return "all"
    own = {study.uid for study in studies if not study.held}
    chosen = [uid for uid in dict.fromkeys(fields.get("study", [])) if uid in own]
    return chosen or None


def _context(
    services: Services, account: Account, pending: dict[str, Any], granted: list[str]
) -> dict[str, Any]:
    fhir = services.settings.fhir_base_url
    launch = pending.get("launch") or {}
    context: dict[str, Any] = {
        "smart_style_url": f"{services.settings.oauth_base_url}/style.json",
    }
    if account.kind == "patient":
        context["fhirUser"] = f"{fhir}/Patient/{account.patient_fhir_id}"
        if "launch/patient" in granted or "launch" in granted:
            context["patient"] = account.patient_fhir_id
            context["need_patient_banner"] = True
    else:
        context["fhirUser"] = f"{fhir}/Practitioner/{account.id}"
        if launch.get("patient") and ("launch" in granted or "launch/patient" in granted):
            context["patient"] = launch["patient"]
            context["need_patient_banner"] = bool(launch.get("need_patient_banner", False))
    if "launch" in granted:
        for name in ("fhirContext", "intent"):
            if launch.get(name):
                context[name] = launch[name]
    if account.display_name:
        context["name"] = account.display_name
    return context


async def create_launch(request: Request) -> Response:
    """``POST /oauth/launch``: an EHR client opens a launch context for an app."""
    services: Services = request.state.services
    token = bearer_token(request.headers.get("authorization"))
    grant = await services.auth.tokens.check(token) if token else None
    client = await services.auth.clients.get(grant.client_id) if grant else None
    if grant is None or client is None:
        return JSONResponse(
            {"error": "invalid_token", "error_description": "An EHR client's token is required."},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if not client.ehr:
        return JSONResponse(
            {"error": "insufficient_scope", "error_description": "Only EHR clients launch apps."},
            status_code=403,
        )
    try:
        body = orjson.loads(await forms.read_body(request, LAUNCH_BODY_BYTES))
    except forms.BodyRejected as exc:
        return JSONResponse(
            {"error": "invalid_request", "error_description": exc.message}, status_code=exc.status
        )
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("patient"), str):
        return JSONResponse(
            {"error": "invalid_request", "error_description": "JSON with a patient id is needed."},
            status_code=400,
        )
    context: dict[str, Any] = {"patient": body["patient"]}
    if isinstance(body.get("user"), str):
        context["user"] = body["user"]
    if isinstance(body.get("fhirContext"), list):
        context["fhirContext"] = [c for c in body["fhirContext"] if isinstance(c, dict)]
    context["need_patient_banner"] = bool(body.get("need_patient_banner", False))
    if isinstance(body.get("intent"), str):
        context["intent"] = body["intent"]
    launch_id = await services.auth.launches.create(client.client_id, context)
    return JSONResponse({"launch": launch_id, "expires_in": 300}, status_code=201)


def routes() -> list[BaseRoute]:
    return [
        Route("/authorize", authorize, methods=["GET", "POST"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/consent", consent, methods=["GET", "POST"]),
        Route("/launch", create_launch, methods=["POST"]),
    ]
