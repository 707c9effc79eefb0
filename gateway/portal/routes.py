"""``/portal``: the patient's own pages, server-rendered, usable without JavaScript.

Sign-in (and first activation) as at the authorization server, the jacket of
studies, and the apps the patient has allowed, each revocable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.audit import AuditEntry
from gateway.auth import jacket, scopes
from gateway.auth.accounts import AccountError
from gateway.auth.sessions import csrf_ok
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

COOKIE = "gateway_portal"
SIGN_IN_FAILED = "The sign-in details are not right, or the account is locked for a while."
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
Handler = Callable[[Request, Services, BrowserSession, Account], Awaitable[Response]]


def render(name: str, services: Services, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("base", services.settings.public_url)
    return HTMLResponse(
        templates.get_template(name).render(**values), status_code=status, headers=HEADERS
    )


def _set_cookie(response: Response, services: Services, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(services.settings.session_hours * 3600),
        path="/portal",
        secure=services.settings.public_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )


def _to(services: Services, path: str) -> RedirectResponse:
    return RedirectResponse(f"{services.settings.public_url}{path}", status_code=303)


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Pages for a signed-in patient; everyone else goes to the sign-in page."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.state.services
        browser = await services.auth.browser_sessions.load(request.cookies.get(COOKIE))
        account = (
            await services.auth.accounts.get(browser.account_id)
            if browser and browser.account_id
            else None
        )
        if browser is None or account is None or account.kind != "patient":
            return _to(services, "/portal/signin")
        if request.method == "POST":
            form = await request.form(max_files=0, max_fields=32)
            token = form.get("csrf_token")
            if not csrf_ok(browser, token if isinstance(token, str) else None):
                return render("signin.html", services, 400, error="Please try again.")
        return await handler(request, services, browser, account)

    return endpoint


async def signin(request: Request) -> Response:
    services: Services = request.state.services
    sessions = services.auth.browser_sessions
    browser = await sessions.load(request.cookies.get(COOKIE))
    cookie = None
    if browser is None:
        cookie, browser = await sessions.start()
    if request.method == "GET":
        response: Response = render("signin.html", services, csrf_token=browser.csrf_token)
        if cookie:
            _set_cookie(response, services, cookie)
        return response
    form = await request.form(max_files=0, max_fields=16)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(browser, fields.get("csrf_token")):
        return render(
            "signin.html", services, 400, csrf_token=browser.csrf_token, error="Please try again."
        )
    accounts = services.auth.accounts
    code = fields.get("access_code", "").strip()
    try:
        if fields.get("mode") == "activate":
            account = await accounts.activate(
                code, fields.get("birth_date", "").strip(), fields.get("passphrase", "")
            )
        else:
            account = await accounts.sign_in(code, fields.get("passphrase", ""))
    except AccountError as exc:
        return render("signin.html", services, 400, csrf_token=browser.csrf_token, error=str(exc))
    if account is None or account.kind != "patient":
        return render(
            "signin.html", services, 401, csrf_token=browser.csrf_token, error=SIGN_IN_FAILED
        )
    new_cookie, _ = await sessions.sign_in(browser, account.id)
    response = _to(services, "/portal/")
    _set_cookie(response, services, new_cookie)
    return response


@signed_in
async def signout(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    await services.auth.browser_sessions.end(browser)
    response = _to(services, "/portal/signin")
    response.delete_cookie(COOKIE, path="/portal")
    return response


@signed_in
async def home(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    patient = account.patient_fhir_id or ""
    studies = await jacket.studies_of(services, patient)
    releases = await services.release.for_patient(services, patient)
    held = {uid: _day(at) for uid, at in releases.held.items()}
    return render(
        "jacket.html",
        services,
        signed_in=True,
        csrf_token=browser.csrf_token,
        user_name=account.display_name or "you",
        studies=studies,
        held=held,
        can_waive=bool(held) and services.settings.release_waiver_allowed,
    )


@signed_in
async def waive(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    """The patient chooses to see new results at once, without the release delay."""
    done = await services.release.waive(account.patient_fhir_id or "")
    await services.audit.record(
        AuditEntry(
            category="consent",
            action="waive-delay",
            outcome=200 if done else 403,
            user=account.id,
            patient=account.patient_fhir_id,
        )
    )
    return _to(services, "/portal/")


@signed_in
async def apps(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    grants = []
    for grant, app_name, last_issued in await services.auth.tokens.grants_of(account.id):
        granted = scopes.split(grant.scope)
        chosen = (grant.context or {}).get("studies")
        grants.append(
            {
                "id": grant.id,
                "app": app_name,
                "permissions": [scopes.describe(s) for s in granted],
                "studies": chosen if isinstance(chosen, list) else None,
                "created": _day(grant.created_at),
                "last_used": _day(last_issued) if last_issued else None,
                "until": str((grant.context or {}).get("consent_until", ""))[:10] or None,
            }
        )
    notice = "Access withdrawn." if request.query_params.get("revoked") else None
    return render(
        "apps.html",
        services,
        signed_in=True,
        csrf_token=browser.csrf_token,
        grants=grants,
        notice=notice,
    )


@signed_in
async def revoke_app(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    revoked = await services.auth.tokens.revoke_for_account(
        request.path_params["grant"], account.id
    )
    await services.audit.record(
        AuditEntry(
            category="consent",
            action="revoke",
            outcome=200 if revoked else 404,
            user=account.id,
            patient=account.patient_fhir_id,
            detail=f"grant {request.path_params['grant'][:64]}",
        )
    )
    return _to(services, "/portal/apps?revoked=1")


WHAT = {
    ("rest", "search"): "Searched your records",
    ("rest", "read"): "Opened a record",
    ("dicomweb", "search"): "Looked up your images",
    ("dicomweb", "retrieve"): "Viewed or downloaded images",
    ("dicomweb", "store"): "Stored images",
    ("token", "authorization_code"): "Received access",
    ("token", "refresh_token"): "Renewed access",
    ("token", "revoke"): "Gave up access",
    ("consent", "grant"): "You allowed an app",
    ("consent", "deny"): "You refused an app",
    ("consent", "revoke"): "You withdrew an app",
    ("login", "sign-in"): "Signed in",
    ("login", "activate"): "Activated the access code",
    ("consent", "waive-delay"): "You chose to see new results at once",
}


@signed_in
async def activity(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    records = await services.audit.search(patient=account.patient_fhir_id or "-", limit=200)
    names = {c.client_id: c.name for c in await services.auth.clients.all()}
    events = [
        {
            "when": _day(record.recorded),
            "who": names.get(record.client_id or "", "You") if record.client_id else "You",
            "what": WHAT.get((record.category, record.action), record.action),
            "study": record.study,
            "result": "Done" if record.outcome < 400 else "Refused",
        }
        for record in records
    ]
    return render(
        "activity.html", services, signed_in=True, csrf_token=browser.csrf_token, events=events
    )


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def routes() -> list[BaseRoute]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/apps", apps, methods=["GET"]),
        Route("/activity", activity, methods=["GET"]),
        Route("/waive", waive, methods=["POST"]),
        Route("/apps/{grant}/revoke", revoke_app, methods=["POST"]),
    ]
