"""What every portal and share page has in common: templates, headers, cookies, sign-in.

Pages are server-rendered (Jinja2, autoescaped) and need no JavaScript. The
Content-Security-Policy allows no script at all, images and forms from this
server only, and no framing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from gateway import forms
from gateway.auth.attempts import TooManyAttempts
from gateway.auth.sessions import csrf_ok
from gateway.numbers import whole_number
from gateway.portal.gates import PORTAL_COOKIE, portal_patient
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

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
Endpoint = Callable[[Request], Awaitable[Response]]
# A page that holds a form, shown again (status 400) with this error when the form was stale.
FormPage = Callable[[Services, BrowserSession, Account, str], Awaitable[Response]]
STALE_FORM = "That form was out of date, so nothing was changed. Please try again."


def render(
    name: str,
    services: Services,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    values.setdefault("base", services.settings.public_url)
    return HTMLResponse(
        templates.get_template(name).render(**values),
        status_code=status,
        headers={**HEADERS, **(headers or {})},
    )


def message(services: Services, status: int, title: str, text: str, **values: Any) -> HTMLResponse:
    """A page that only says something (not found, not yet, ended ...).

    ``back`` and ``back_label`` make its way back, when it is not "my studies".
    """
    return render("message.html", services, status, title=title, message=text, **values)


def image_number(request: Request) -> int:
    """The 1-based image of a study page (``?image=``); 400 when it is not a number."""
    return _ordinal(request, "image")


def page_number(request: Request) -> int:
    """The 1-based page of a long list (``?page=``); 400 when it is not a number."""
    return _ordinal(request, "page")


def _ordinal(request: Request, name: str) -> int:
    # Past the end is the last image or page (the caller clamps); 0 is the first.
    return max(1, whole_number(name, request.query_params.get(name, "1"), maximum=999_999))


def set_cookie(response: Response, services: Services, name: str, value: str, path: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(services.settings.session_hours * 3600),
        path=path,
        secure=services.settings.public_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )


def redirect(services: Services, path: str) -> RedirectResponse:
    return RedirectResponse(f"{services.settings.public_url}{path}", status_code=303)


def moment(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


async def form_fields(request: Request, max_fields: int = 32) -> dict[str, Any]:
    """A posted form: single values as strings, repeated ``study`` fields as a list."""
    form = await forms.read_form(request, max_fields=max_fields, max_bytes=forms.PAGE_FORM_BYTES)
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    fields["study"] = [v for v in form.getlist("study") if isinstance(v, str)]
    return fields


def too_many(services: Services, exc: TooManyAttempts, template: str, **values: str) -> Response:
    return render(
        template,
        services,
        429,
        headers={"Retry-After": str(exc.retry_after)},
        error=exc.advice,
        **values,
    )


def zip_response(chunks: AsyncIterator[bytes], name: str) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{name}.zip"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def signed_in(handler: Handler) -> Endpoint:
    """Pages for a signed-in patient; everyone else goes to the sign-in page.

    A POST must carry the session's CSRF token; its form is then parsed once and
    left in ``request.state.form``. Without it, nothing is done and a page says so.
    """
    return _signed_in(handler, None)


def signed_in_form(page: FormPage) -> Callable[[Handler], Endpoint]:
    """A form that a signed-in patient posts from ``page``.

    A stale CSRF token (a form from an earlier session, say) does nothing, keeps
    the patient signed in, and shows ``page`` again, with a form that works and
    a word on what happened.
    """
    return lambda handler: _signed_in(handler, page)


def _signed_in(handler: Handler, page: FormPage | None) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        services: Services = request.state.services
        found = await portal_patient(services, request.cookies.get(PORTAL_COOKIE))
        if found is None:
            return redirect(services, "/portal/signin")
        browser, account = found
        if request.method == "POST":
            fields = await form_fields(request, max_fields=512)
            if not csrf_ok(browser, fields.get("csrf_token")):
                if page is not None:
                    return await page(services, browser, account, STALE_FORM)
                return message(
                    services,
                    400,
                    "Please try again",
                    STALE_FORM,
                    signed_in=True,
                    csrf_token=browser.csrf_token,
                )
            request.state.form = fields
        return await handler(request, services, browser, account)

    return endpoint
