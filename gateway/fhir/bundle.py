"""Searchset Bundles with absolute fullUrls and self/next/previous links."""

from __future__ import annotations

from urllib.parse import urlencode

from gateway.fhir.mapping import Resource


def searchset(
    *,
    base_url: str,
    resource_type: str,
    query: list[tuple[str, str]],
    matches: list[Resource],
    includes: list[Resource] = (),  # type: ignore[assignment]
    total: int | None,
    offset: int = 0,
    count: int | None = None,
    warning: str | None = None,
) -> Resource:
    """``query`` holds the parameters the server used; paging ones are rewritten here."""
    kept = [(k, v) for k, v in query if k not in ("_offset", "_count")]

    def link(relation: str, at: int) -> dict[str, str]:
        page = [*kept, ("_count", str(count))] if count is not None else list(kept)
        if at:
            page.append(("_offset", str(at)))
        suffix = f"?{urlencode(page)}" if page else ""
        return {"relation": relation, "url": f"{base_url}/{resource_type}{suffix}"}

    links = [link("self", offset)]
    if count and total is not None and offset + count < total:
        links.append(link("next", offset + count))
    if count and offset > 0:
        links.append(link("previous", max(0, offset - count)))
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    entries = [
        {
            "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": mode},
        }
        for mode, group in (("match", matches), ("include", includes))
        for r in group
    ]
    if warning:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "warning", "code": "too-costly", "diagnostics": warning}
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle
