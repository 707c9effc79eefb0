"""DICOMweb errors carry their message in a Warning header (PS3.18 8.6.3): whatever the
message holds (text the client sent, an error from a library), the header is one line
of ASCII in a quoted-string, and the answer gets out. Real uvicorn, over HTTP."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.dicomweb import routes

INSTANCE = "/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
# RFC 9110 5.6.4: a quoted-string holds qdtext and quoted-pairs, nothing else.
QUOTED_WARNING = re.compile(r'299 gateway "(?:[\t !#-\[\]-~]|\\[\t -~])*"')


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"{INSTANCE}/bulk/%E2%9C%93%E6%97%A5", id="not-latin-1"),
        pytest.param(f"{INSTANCE}/bulk/ab%00cd", id="nul"),
        pytest.param("/dicomweb/studies?includefield=ab%0Acd%0D%0Aef", id="newline"),
        pytest.param("/dicomweb/studies?includefield=ab%00cd", id="nul-in-query"),
        pytest.param(f"{INSTANCE}/bulk/ab%22cd%5C", id="quote-and-backslash"),
        pytest.param(f"{INSTANCE}/bulk/%C3%A9t%C3%A9", id="latin-1"),
    ],
)
def test_any_message_makes_a_valid_warning(served: str, path: str) -> None:
    """Each of these echoes what the client sent in its message."""
    response = httpx.get(f"{served}{path}", timeout=10)
    assert response.status_code == 400, response.text
    assert QUOTED_WARNING.fullmatch(response.headers["warning"]), response.headers["warning"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain", '299 gateway "plain"'),
        ('say "hi" \\ bye', '299 gateway "say \\"hi\\" \\\\ bye"'),
        ("line one\nline two\r\n\x00end", '299 gateway "line one line two end"'),
        ("café ✓ 日本", '299 gateway "cafe ? ??"'),
    ],
)
def test_warning_text_is_escaped_and_one_line(message: str, expected: str) -> None:
    assert routes.warning_header(message) == expected


def test_a_long_message_is_cut() -> None:
    warning = routes.warning_header("x" * 5000 + '"')
    assert QUOTED_WARNING.fullmatch(warning)
    assert len(warning) <= 300 and warning.endswith('..."')
