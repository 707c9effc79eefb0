"""The portal's Activity page: who saw what of the patient's records, and when.

It reads the same audit trail that ``/fhir/AuditEvent`` serves, a page at a
time, newest first, and puts each record in plain words.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import jacket
from gateway.authorization import patient_access
from gateway.portal.pages import moment, page_number, render, signed_in
from gateway.services import Services
from gateway.store.models import Account, AuditRecord, BrowserSession

PAGE_SIZE = 100
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
    ("consent", "reuse"): "An app came back within what you allowed it",
    ("consent", "revoke"): "You withdrew an app",
    ("consent", "waive-delay"): "You chose to see new results at once",
    ("login", "sign-in"): "Signed in",
    ("login", "activate"): "Activated the access code",
    ("share", "create"): "You created a share link",
    ("share", "mail"): "The share link was mailed",
    ("share", "open"): "Opened your share link with the PIN",
    ("share", "pin-failure"): "A wrong PIN was entered for your share link",
    ("share", "locked"): "Your share link locked after wrong PINs",
    ("share", "view"): "Looked at a shared study",
    ("share", "viewer"): "Opened the shared studies in the viewer",
    ("share", "download"): "Downloaded shared studies",
    ("share", "revoke"): "You withdrew a share link",
    ("research", "donate"): "You donated to a research project",
    ("research", "withdraw"): "You withdrew a research donation",
    ("research", "deliver"): "A de-identified copy went to a research project",
    (
        "research",
        "deliver-partial",
    ): "A de-identified copy went to a research project in part: some images were refused",
    ("research", "deliver-failed"): "A de-identified copy could not go to a research project",
    ("research", "deliver-stopped"): "A delivery to a research project was stopped",
    ("research", "pull"): "A research project read a de-identified copy",
    ("transfer", "send"): "Studies were sent to a hospital",
    ("transfer", "revoke"): "A send to a hospital was withdrawn",
    ("transfer", "push-done"): "Studies were delivered to a hospital",
    (
        "transfer",
        "push-partial",
    ): "Studies were partly delivered to a hospital: some images were refused",
    ("transfer", "push-failed"): "Studies could not be delivered to a hospital",
    ("transfer", "push-cancelled"): "A delivery to a hospital was stopped",
    ("admin", "enroll"): "Staff enrolled you",
    ("admin", "letter"): "Staff printed your enrollment letter",
}
# The patient's own acts that were refused: "You withdrew ..." beside "Refused" would
# say it happened.
REFUSED = {
    ("consent", "revoke"): "You tried to withdraw an app's access: nothing to withdraw",
    ("consent", "waive-delay"): "You asked to see new results at once: not offered here",
    ("share", "revoke"): "You tried to withdraw a share link: nothing to withdraw",
    ("transfer", "revoke"): "A send to a hospital was to be withdrawn: nothing to withdraw",
}
# Transfers that did not end well are told as they are, never as "Done".
PROBLEMS = {
    "push-partial": "Partly delivered",
    "push-failed": "Failed",
    "push-cancelled": "Stopped",
    "deliver-partial": "Partly delivered",
    "deliver-failed": "Failed",
    "deliver-stopped": "Stopped",
}
# Whose detail (counts, the reason) the patient is shown.
DETAILED = ("transfer", "research")


@signed_in
async def activity(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    access = await patient_access(services, account.patient_fhir_id or "")
    page = page_number(request)
    records, total = await services.records.trail.events(
        access, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    apps = {c.client_id: c.name for c in await services.auth.clients.all()}
    shares = {s.id: s.label for s in await services.shares.of_account(account.id)}
    studies = {s.uid: s.name for s in jacket.lines(await services.records.studies.jacket(access))}
    events = [
        {
            "when": moment(record.recorded),
            "who": _who(record, apps, shares),
            "what": _what(record),
            "study": studies.get(record.study, "a study") if record.study else None,
            "result": _result(record),
            "detail": record.detail if _detailed(record) else None,
        }
        for record in records
    ]
    return render(
        "activity.html",
        services,
        signed_in=True,
        csrf_token=browser.csrf_token,
        events=events,
        total=total,
        newer=page - 1 if page > 1 else None,
        older=page + 1 if page * PAGE_SIZE < total else None,
    )


def _detailed(record: AuditRecord) -> bool:
    return record.category == "transfer" or (
        record.category == "research" and record.action.startswith("deliver")
    )


def _result(record: AuditRecord) -> str:
    if record.category in DETAILED and record.action in PROBLEMS:
        return PROBLEMS[record.action]
    return "Done" if record.outcome < 400 else "Refused"


def _what(record: AuditRecord) -> str:
    key = (record.category, record.action)
    if record.outcome >= 400 and key in REFUSED:
        return REFUSED[key]
    return WHAT.get(key, record.action)


def _who(record: AuditRecord, apps: dict[str, str], shares: dict[str, str]) -> str:
    user = record.user or ""
    if record.client_id:
        app = apps.get(record.client_id, "An app")
        return f"A physician, with {app}" if "/Practitioner/" in user else app
    if user.startswith("share/"):
        label = shares.get(user.removeprefix("share/"))
        return f"Share link: {label}" if label else "Share link recipient"
    if "/Practitioner/" in user:
        return "A physician"
    if user.startswith("research/"):
        return "Research project " + (record.detail or "").split(":")[0]
    if record.category == "transfer":
        return "You" if user else "The gateway"
    return "You" if user or record.category in ("login", "consent", "share") else "Someone"
