"""The receiving end of a transfer: fetch what a share link or a sending site offers.

``gateway import --share LINK --pin PIN`` opens the share link as its recipient would
(the PIN form, then the ZIP of every shared study); ``gateway import --from-site URL
--client ID --key FILE`` signs in to a sending gateway as its backend client (SMART
Backend Services: a JWT assertion signed with the key) and fetches every study the
sending site has let it see. The files land in a folder, and are then stored in the
local archive with the patient ID reconciled (:func:`reconcile`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.dicomweb.instances import SinglePart
from gateway.errors import GatewayError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
Advance = Callable[[int, int | None], None]  # (done, total)


class ReceiveError(Exception):
    """The share or the site did not give the studies; the message says why."""


def reconcile(dataset: Dataset, patient_id: str, issuer: str) -> None:
    """Give an outside instance the local patient ID; keep the original one (with its
    issuer) in OtherPatientIDsSequence, as receiving sites do with outside studies."""
    original, original_issuer = (
        str(dataset.get("PatientID", "") or ""),
        dataset.get("IssuerOfPatientID"),
    )
    if original == patient_id and str(original_issuer or "") == issuer:
        return
    others = list(dataset.get("OtherPatientIDsSequence", []) or [])
    if original and not any(
        str(o.get("PatientID", "")) == original
        and str(o.get("IssuerOfPatientID", "")) == str(original_issuer or "")
        for o in others
    ):
        item = Dataset()
        item.PatientID = original
        if original_issuer:
            item.IssuerOfPatientID = str(original_issuer)
        item.TypeOfPatientID = "TEXT"
        others.append(item)
    dataset.OtherPatientIDsSequence = DicomSequence(others)
    dataset.PatientID = patient_id
    if issuer:
        dataset.IssuerOfPatientID = issuer
    elif "IssuerOfPatientID" in dataset:
        del dataset.IssuerOfPatientID


def fetch_share(link: str, pin: str, folder: Path, advance: Advance, timeout: float = 60) -> int:
    """Open the share link with its PIN and unpack its ZIP into ``folder``; the file count."""
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or "/share/" not in parts.path:
        raise ReceiveError("the link must be an http(s) share link (…/share/TOKEN)")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.split('/share/')[0]}"
    with httpx.Client(timeout=timeout) as client:
        try:
            form = client.get(link)
            if form.status_code != 200:
                raise ReceiveError("the share link is not valid (expired, withdrawn or locked)")
            found = CSRF.search(form.text)
            if found is None:
                raise ReceiveError("the share link's page has no PIN form")
            opened = client.post(link, data={"csrf_token": found.group(1), "pin": pin})
            if opened.status_code != 303 and "/share/view" not in str(opened.url):
                raise ReceiveError(
                    "the PIN was refused"
                    if opened.status_code in (401, 404)
                    else f"the share answered {opened.status_code}"
                )
            archive = folder / "share.zip"
            with client.stream("GET", f"{base}/share/view/download") as download:
                if download.status_code != 200:
                    raise ReceiveError(f"the download answered {download.status_code}")
                total = int(download.headers.get("content-length", 0)) or None
                done = 0
                with archive.open("wb") as out:
                    for chunk in download.iter_bytes():
                        out.write(chunk)
                        done += len(chunk)
                        advance(done, total)
        except httpx.HTTPError as exc:
            raise ReceiveError(f"the sharing site did not answer ({type(exc).__name__})") from None
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.is_dir() or not member.filename.lower().endswith(".dcm"):
                continue
            target = folder / f"{count:06d}.dcm"
            with zf.open(member) as source, target.open("wb") as out:
                while piece := source.read(1 << 20):
                    out.write(piece)
            count += 1
    archive.unlink()
    return count


def _signing_key(path: Path) -> RSAKey | ECKey:
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = text  # PEM
    if isinstance(data, dict) and "keys" in data:
        data = next((k for k in data["keys"] if "d" in k), None)
        if data is None:
            raise ReceiveError(f"{path} holds no private key")
    kty = data.get("kty") if isinstance(data, dict) else None
    try:
        if kty == "EC" or (isinstance(data, str) and "EC PRIVATE" in data):
            return ECKey.import_key(data)
        return RSAKey.import_key(data)
    except (ValueError, TypeError) as exc:
        raise ReceiveError(f"{path} is not a private key (JWK or PEM): {exc}") from None


def site_token(client: httpx.Client, site: str, client_id: str, key_file: Path) -> str:
    """A backend token from a sending gateway (SMART Backend Services)."""
    key = _signing_key(key_file)
    discovery = client.get(f"{site}/fhir/.well-known/smart-configuration")
    if discovery.status_code != 200:
        raise ReceiveError(f"{site} has no SMART configuration ({discovery.status_code})")
    token_url = discovery.json().get("token_endpoint")
    alg = "ES384" if isinstance(key, ECKey) else "RS384"
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if key.kid:
        header["kid"] = key.kid
    now = int(time.time())
    assertion = jwt.encode(
        header,
        {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithms=[alg],
    )
    answer = client.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/ImagingStudy.rs system/DocumentReference.rs",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    if answer.status_code != 200:
        raise ReceiveError(
            f"the site refused the client ({answer.status_code}: {answer.text[:200]})"
        )
    return str(answer.json()["access_token"])


def _values(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else ""


def fetch_from_site(
    site: str, client_id: str, key_file: Path, folder: Path, advance: Advance, timeout: float = 60
) -> int:
    """Every instance of every study the site lets this client see, into ``folder``."""
    site = site.rstrip("/")
    with httpx.Client(timeout=timeout) as client:
        try:
            token = site_token(client, site, client_id, key_file)
            headers = {"Authorization": f"Bearer {token}"}
            listed = client.get(
                f"{site}/dicomweb/studies", headers={**headers, "Accept": "application/dicom+json"}
            )
            if listed.status_code not in (200, 204):
                raise ReceiveError(f"the site's study search answered {listed.status_code}")
            studies = [_values(s, "0020000D") for s in (listed.json() if listed.content else [])]
            if not any(studies):
                raise ReceiveError(
                    "the site lets this client see no study (nothing was sent to it, or the "
                    "send was withdrawn or has expired)"
                )
            instances: list[tuple[str, str, str]] = []
            for study in filter(None, studies):
                found = client.get(
                    f"{site}/dicomweb/studies/{study}/instances",
                    headers={**headers, "Accept": "application/dicom+json"},
                )
                if found.status_code not in (200, 204):
                    raise ReceiveError(f"the site's instance search answered {found.status_code}")
                for item in found.json() if found.content else []:
                    instances.append((study, _values(item, "0020000E"), _values(item, "00080018")))
            for number, (study, series, sop) in enumerate(instances):
                url = f"{site}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
                answer = client.get(url, headers={**headers, "Accept": INSTANCE})
                if answer.status_code != 200:
                    raise ReceiveError(f"the site answered {answer.status_code} for an instance")
                body = SinglePart(answer.headers.get("content-type", ""))
                try:
                    pieces = body.feed(answer.content)
                    body.finish()
                except GatewayError:
                    raise ReceiveError("the site sent an unreadable instance") from None
                (folder / f"{number:06d}.dcm").write_bytes(b"".join(pieces))
                advance(number + 1, len(instances))
        except httpx.HTTPError as exc:
            raise ReceiveError(f"the sending site did not answer ({type(exc).__name__})") from None
    return len(instances)
