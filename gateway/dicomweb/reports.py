"""Reports and manifests held as DICOM: which objects they are, and SR rendered for people.

Rendering works on DICOM JSON (instance metadata), so the same pure functions
serve the DICOMweb rendered resource and the size the FHIR mapping reports.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
STRUCTURED_REPORT_NAMES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
}
STRUCTURED_REPORTS = frozenset(STRUCTURED_REPORT_NAMES)
CLASS_NAMES = {
    **STRUCTURED_REPORT_NAMES,
    ENCAPSULATED_PDF: "Encapsulated PDF",
    KEY_OBJECT_SELECTION: "Key Object Selection Document",
}
DOCUMENT_CLASSES = frozenset(CLASS_NAMES)
# Encapsulated CDA, STL, OBJ and MTL: documents too, though not mapped to DocumentReference.
OTHER_ENCAPSULATED = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.104.2",
        "1.2.840.10008.5.1.4.1.1.104.3",
        "1.2.840.10008.5.1.4.1.1.104.4",
        "1.2.840.10008.5.1.4.1.1.104.5",
    }
)
# Whose content only a DocumentReference permission reaches: reports, manifests and
# every Encapsulated Document.
CONTENT_CLASSES = DOCUMENT_CLASSES | OTHER_ENCAPSULATED
# Series-level modalities under which these objects are stored (PS3.3 C.7.3.1.1.1).
DOCUMENT_MODALITIES = ("SR", "DOC", "KO")


def kind_of(instance: Mapping[str, Any]) -> str | None:
    """'sr', 'pdf', 'kos', or None for anything that is not a document."""
    sop_class = dj.text(instance, "SOPClassUID") or ""
    if sop_class in STRUCTURED_REPORTS:
        return "sr"
    if sop_class == ENCAPSULATED_PDF:
        return "pdf"
    if sop_class == KEY_OBJECT_SELECTION:
        return "kos"
    return None


def doc_status(instance: DicomJson) -> str | None:
    """preliminary | final | amended, from the SR flags (PS3.3 C.17.2); None if not said."""
    preliminary = (dj.text(instance, "PreliminaryFlag") or "").upper()
    completion = (dj.text(instance, "CompletionFlag") or "").upper()
    verification = (dj.text(instance, "VerificationFlag") or "").upper()
    if preliminary == "PRELIMINARY" or completion == "PARTIAL":
        return "preliminary"
    if verification == "VERIFIED" or preliminary == "FINAL":
        return "amended" if dj.items(instance, "PredecessorDocumentsSequence") else "final"
    if verification == "UNVERIFIED":
        return "preliminary"
    return None


def title_of(instance: Mapping[str, Any]) -> str | None:
    concept = dj.items(instance, "ConceptNameCodeSequence")
    return (
        dj.text(instance, "DocumentTitle")
        or (dj.text(concept[0], "CodeMeaning") if concept else None)
        or dj.text(instance, "SeriesDescription")
    )


def _meaning(item: Mapping[str, Any], keyword: str = "ConceptNameCodeSequence") -> str:
    concept = dj.items(item, keyword)
    return (dj.text(concept[0], "CodeMeaning") or "") if concept else ""


def _value(item: Mapping[str, Any]) -> str:
    """The value of one content item as text (PS3.3 C.17.3 value types)."""
    kind = (dj.text(item, "ValueType") or "").upper()
    if kind == "TEXT":
        return "\n".join(dj.texts(item, "TextValue"))
    if kind == "CODE":
        return _meaning(item, "ConceptCodeSequence")
    if kind == "NUM":
        measured = dj.items(item, "MeasuredValueSequence")
        if not measured:
            return ""
        number = dj.text(measured[0], "NumericValue") or ""
        units = dj.items(measured[0], "MeasurementUnitsCodeSequence")
        unit = (dj.text(units[0], "CodeValue") or "") if units else ""
        return f"{number} {unit}".strip() if unit not in ("1", "") else number
    if kind == "PNAME":
        name = dj.text(item, "PersonName")
        return dj.display_name(name) if name else ""
    if kind in ("DATE", "TIME", "DATETIME", "UIDREF"):
        keyword = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "UIDREF": "UID"}[kind]
        return dj.text(item, keyword) or ""
    if kind in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = dj.items(item, "ReferencedSOPSequence")
        return f"[{kind.lower()} {dj.text(refs[0], 'ReferencedSOPInstanceUID')}]" if refs else ""
    return ""


def _walk(items: list[Any], depth: int) -> Iterator[tuple[int, str, str, bool]]:
    """(depth, heading, value, is_container) for each content item, in document order."""
    for item in items:
        if not isinstance(item, Mapping):
            continue
        container = (dj.text(item, "ValueType") or "").upper() == "CONTAINER"
        yield depth, _meaning(item), "" if container else _value(item), container
        yield from _walk(dj.items(item, "ContentSequence"), depth + 1)


def status_line(instance: Mapping[str, Any]) -> str:
    completion = (dj.text(instance, "CompletionFlag") or "").upper()
    verification = (dj.text(instance, "VerificationFlag") or "").upper()
    preliminary = (dj.text(instance, "PreliminaryFlag") or "").upper()
    if preliminary == "PRELIMINARY" or completion == "PARTIAL" or verification == "UNVERIFIED":
        return "PRELIMINARY - not yet verified"
    if verification == "VERIFIED":
        observers = dj.items(instance, "VerifyingObserverSequence")
        name = dj.text(observers[0], "VerifyingObserverName") if observers else None
        return f"Final, verified by {dj.display_name(name)}" if name else "Final, verified"
    return ""


def _header(instance: DicomJson) -> list[tuple[str, str]]:
    name = dj.text(instance, "PatientName")
    rows = [
        ("Patient", dj.display_name(name) if name else ""),
        ("Patient ID", dj.text(instance, "PatientID") or ""),
        ("Study", dj.text(instance, "StudyDescription") or ""),
        ("Study date", _dicom_date(dj.text(instance, "StudyDate"))),
        ("Accession", dj.text(instance, "AccessionNumber") or ""),
        ("Status", status_line(instance)),
    ]
    return [(label, value) for label, value in rows if value]


def _dicom_date(value: str | None) -> str:
    if not value or len(value) != 8 or not value.isdigit():
        return value or ""
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def render_text(instance: DicomJson) -> str:
    """A structured report as plain text: a header, then the content tree, indented."""
    lines = [title_of(instance) or "Report", ""]
    lines += [f"{label}: {value}" for label, value in _header(instance)]
    lines.append("")
    for depth, heading, value, container in _walk(dj.items(instance, "ContentSequence"), 0):
        indent = "  " * depth
        if container:
            lines.append(f"{indent}{heading.upper()}" if heading else "")
        elif heading and value:
            lines.append(f"{indent}{heading}: {value}")
        elif value:
            lines.append(f"{indent}{value}")
    return "\n".join(lines).rstrip() + "\n"


def render_html(instance: DicomJson) -> str:
    """A structured report as a standalone, escaped HTML page."""
    title = html.escape(title_of(instance) or "Report")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;max-width:48em;margin:2em auto;line-height:1.5}"
        "dt{font-weight:bold}.status{font-weight:bold}</style>",
        f"</head><body><h1>{title}</h1><table>",
    ]
    for label, value in _header(instance):
        parts.append(
            f"<tr><th scope=row>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        )
    parts.append("</table>")
    for depth, heading, value, container in _walk(dj.items(instance, "ContentSequence"), 0):
        level = min(depth + 2, 6)
        if container:
            if heading:
                parts.append(f"<h{level}>{html.escape(heading)}</h{level}>")
            continue
        body = html.escape(value).replace("\n", "<br>")
        if heading:
            parts.append(f"<p><strong>{html.escape(heading)}:</strong> {body}</p>")
        elif body:
            parts.append(f"<p>{body}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
