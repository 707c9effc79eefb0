"""``/portal``: the patient's own pages, server-rendered, usable without JavaScript.

Sign-in (and first activation) as at the authorization server, the jacket of
studies with each study's images and reports, the apps the patient has
allowed, the share links they made, and who saw what.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from gateway import error_handlers
from gateway.audit import AuditEntry, AuditMiddleware
from gateway.auth import jacket, scopes
from gateway.auth.accounts import AccountError
from gateway.auth.attempts import TooManyAttempts, client_address
from gateway.auth.authorize import audit_sign_in
from gateway.auth.sessions import csrf_ok
from gateway.authorization import patient_access
from gateway.dicomweb import routes as dicomweb_routes
from gateway.errors import Held, NotFound
from gateway.portal import activity as activity_page
from gateway.portal import research_pages, shares_pages, sites_pages
from gateway.portal.gates import PORTAL_COOKIE, ImageGate
from gateway.portal.pages import (
    form_fields,
    image_number,
    message,
    moment,
    redirect,
    render,
    set_cookie,
    signed_in,
    signed_in_form,
    too_many,
    zip_response,
)
from gateway.portal.viewing import study_view
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

SIGN_IN_FAILED = "The sign-in details are not right, or the account is locked for a while."
IMAGES = "/portal/dicomweb"


async def signin(request: Request) -> Response:
    services: Services = request.state.services
    sessions = services.auth.browser_sessions
    browser = await sessions.load(request.cookies.get(PORTAL_COOKIE))
    cookie = None
    if browser is None:
        cookie, browser = await sessions.start()
    if request.method == "GET":
        page = render("signin.html", services, csrf_token=browser.csrf_token)
        if cookie:
            set_cookie(page, services, PORTAL_COOKIE, cookie, "/portal")
        return page
    fields = await form_fields(request, max_fields=16)
    if not csrf_ok(browser, fields.get("csrf_token")):
        return render(
            "signin.html", services, 400, csrf_token=browser.csrf_token, error="Please try again."
        )
    attempts, address = services.auth.attempts, client_address(request)
    # Taken with the account's try in one transaction: then a known access code costs no
    # more database work than an unknown one.
    first = attempts.taking("sign-in", address)
    accounts = services.auth.accounts
    code = str(fields.get("access_code", "")).strip()
    mode = fields.get("mode")
    try:
        if mode == "activate":
            account = await accounts.activate(
                code,
                str(fields.get("birth_date", "")).strip(),
                str(fields.get("passphrase", "")),
                first=first,
            )
        else:
            account = await accounts.sign_in(code, str(fields.get("passphrase", "")), first=first)
    except TooManyAttempts as exc:
        return too_many(services, exc, "signin.html", csrf_token=browser.csrf_token)
    except AccountError as exc:
        return render("signin.html", services, 400, csrf_token=browser.csrf_token, error=str(exc))
    account = account if account is not None and account.kind == "patient" else None
    await audit_sign_in(services, account, str(mode or "patient"))
    if account is None:
        return render(
            "signin.html", services, 401, csrf_token=browser.csrf_token, error=SIGN_IN_FAILED
        )
    await attempts.give_back("sign-in", address)
    new_cookie, _ = await sessions.sign_in(browser, account.id)
    response: Response = redirect(services, "/portal/")
    set_cookie(response, services, PORTAL_COOKIE, new_cookie, "/portal")
    return response


@signed_in
async def signout(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    await services.auth.browser_sessions.end(browser)
    response = redirect(services, "/portal/signin")
    response.delete_cookie(PORTAL_COOKIE, path="/portal")
    return response


@signed_in
async def home(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    access = await patient_access(services, account.patient_fhir_id or "")
    studies = jacket.lines(await services.records.studies.jacket(access))
    held = any(study.held for study in studies)
    return render(
        "jacket.html",
        services,
        signed_in=True,
        csrf_token=browser.csrf_token,
        user_name=account.display_name or "you",
        studies=studies,
        can_waive=held and services.settings.release_waiver_allowed,
    )


@signed_in
async def study(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    """One of the patient's released studies: its images, one at a time, and its reports."""
    uid = request.path_params["uid"]
    access = await patient_access(services, account.patient_fhir_id or "")
    if uid in access.held:
        return message(
            services,
            403,
            "Not available yet",
            f"This study will be available to you from {moment(access.held[uid])}, "
            "so that your physician can go over the results with you first.",
            signed_in=True,
            csrf_token=browser.csrf_token,
        )
    view = await study_view(services, access, uid, IMAGES)
    if view is None:
        return message(
            services,
            404,
            "Study not found",
            "This study is not in your records.",
            signed_in=True,
            csrf_token=browser.csrf_token,
        )
    return render(
        "study.html",
        services,
        signed_in=True,
        csrf_token=browser.csrf_token,
        view=view,
        shown=view.image(request.query_params.get("series"), image_number(request)),
        page_url=f"/portal/studies/{uid}",
        images=IMAGES,
        download=f"/portal/studies/{uid}/download",
    )


@signed_in
async def download(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    """The patient's own copy of a released study, as a ZIP of DICOM files."""
    patient = account.patient_fhir_id or ""
    uid = request.path_params["uid"]
    access = await patient_access(services, patient)
    try:
        archive = await services.records.images.archive(access, [uid])
    except (NotFound, Held):
        return message(
            services,
            404,
            "Study not found",
            "This study is not in your records, or not available yet.",
            signed_in=True,
            csrf_token=browser.csrf_token,
        )
    await services.audit.record(
        AuditEntry(
            category="dicomweb",
            action="retrieve",
            outcome=200,
            user=access.actor.user,
            patient=patient,
            study=uid,
            detail="portal download (ZIP)",
        )
    )
    return zip_response(archive, f"study-{uid[-12:]}")


@signed_in
async def waive(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    """The patient chooses to see new results at once, without the release delay."""
    access = await patient_access(services, account.patient_fhir_id or "")
    done = await services.records.studies.waive_delay(access)
    await services.audit.record(
        AuditEntry(
            category="consent",
            action="waive-delay",
            outcome=200 if done else 403,
            user=account.id,
            patient=account.patient_fhir_id,
        )
    )
    if not done:
        return message(
            services,
            403,
            "Not available",
            "Seeing new results at once is not offered here, so nothing was changed. "
            "New results reach you when their waiting time is over.",
            signed_in=True,
            csrf_token=browser.csrf_token,
        )
    return redirect(services, "/portal/")


async def _apps_page(
    services: Services,
    browser: BrowserSession,
    account: Account,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    access = await patient_access(services, account.patient_fhir_id or "")
    names = {
        study.uid: study.name
        for study in jacket.lines(await services.records.studies.jacket(access))
    }
    grants = []
    for grant, app_name, last_issued in await services.auth.tokens.grants_of(account.id):
        granted = scopes.split(grant.scope)
        chosen = (grant.context or {}).get("studies")
        grants.append(
            {
                "id": grant.id,
                "app": app_name,
                "permissions": [scopes.describe(s) for s in granted],
                "studies": (
                    [names.get(uid, "A study no longer on file") for uid in chosen]
                    if isinstance(chosen, list)
                    else None
                ),
                "created": moment(grant.created_at),
                "last_used": moment(last_issued) if last_issued else None,
                "until": str((grant.context or {}).get("consent_until", ""))[:10] or None,
            }
        )
    return render(
        "apps.html",
        services,
        400 if error else 200,
        signed_in=True,
        csrf_token=browser.csrf_token,
        grants=grants,
        error=error,
        notice=notice,
    )


@signed_in
async def apps(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    # The notice comes from the database, not from the address: only a grant of this
    # patient that is withdrawn makes the page say so.
    withdrawn = request.query_params.get("withdrawn", "")
    app_name = await services.auth.tokens.withdrawn_app(withdrawn, account.id)
    notice = f"Access withdrawn from {app_name}." if app_name else None
    return await _apps_page(services, browser, account, notice=notice)


@signed_in_form(_apps_page)
async def revoke_app(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    grant = request.path_params["grant"][:64]
    revoked = await services.auth.tokens.revoke_for_account(grant, account.id)
    await services.audit.record(
        AuditEntry(
            category="consent",
            action="revoke",
            outcome=200 if revoked else 404,
            user=account.id,
            patient=account.patient_fhir_id,
            detail=f"grant {grant}",
        )
    )
    if not revoked:
        return message(
            services,
            404,
            "Nothing to withdraw",
            "That app is not one you allowed, or its access was already withdrawn.",
            signed_in=True,
            csrf_token=browser.csrf_token,
            back="/portal/apps",
            back_label="Back to my apps",
        )
    return redirect(services, f"/portal/apps?withdrawn={grant}")


def routes() -> list[BaseRoute]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/studies/{uid}", study, methods=["GET"]),
        Route("/studies/{uid}/download", download, methods=["GET"]),
        Route("/apps", apps, methods=["GET"]),
        Route("/apps/{grant}/revoke", revoke_app, methods=["POST"]),
        *shares_pages.routes(),
        *research_pages.routes(),
        *sites_pages.routes(),
        Route("/activity", activity_page.activity, methods=["GET"]),
        Route("/waive", waive, methods=["POST"]),
        Mount(
            "/dicomweb",
            routes=dicomweb_routes.viewing_routes(),
            middleware=[
                Middleware(AuditMiddleware, api="dicomweb", refusal=error_handlers.audit_failure),
                Middleware(ImageGate, who="portal"),
            ],
        ),
    ]
