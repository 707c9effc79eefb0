"""Cleaning free text (the C action on descriptors and structured content): best effort.

A Redactor knows the identifying values of one instance (names, IDs, dates,
UIDs gathered from its header before anything is changed) and removes them
from text, together with anything that looks like a date, a UID or a long
number. It cannot know a name that appears nowhere in the header (a relative,
a nurse named only in the text): free-text redaction is never complete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
# Dates as people write them: 2015-03-04, 04/03/2015, 4.3.15, 20150304, 4 March 2015.
_MONTHS = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_PATTERNS = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(rf"\b\d{{1,2}}\s+(?:{_MONTHS})\.?,?\s+\d{{2,4}}\b", re.IGNORECASE),
    re.compile(rf"\b(?:{_MONTHS})\.?\s+\d{{1,2}},?\s+\d{{2,4}}\b", re.IGNORECASE),
    re.compile(r"\b\d+(?:\.\d+){3,}\b"),  # UIDs and other dotted identifiers
    re.compile(r"\b[A-Za-z]*\d[\w-]*\d{4,}[\w-]*\b"),  # MRNs, accession numbers: 4+ digits
    re.compile(r"\b\d{5,}\b"),  # any long number (dates written as digits among them)
)
_MIN_TERM = 2


class Redactor:
    """Removes one instance's known identifiers and date-, UID- and ID-like text."""

    def __init__(self, terms: Iterable[str]) -> None:
        words: set[str] = set()
        for term in terms:
            for part in re.split(r"[\^=\s,]+", term):
                part = part.strip(" .")
                if len(part) >= _MIN_TERM:
                    words.add(part)
        # Longest first, so "Smith-Jones" goes before "Smith".
        ordered = sorted(words, key=len, reverse=True)
        self._known = (
            re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in ordered), re.IGNORECASE)
            if ordered
            else None
        )

    def clean(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        for pattern in _PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text
