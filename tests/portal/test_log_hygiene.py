"""A share link's token never reaches the server's logs."""

from __future__ import annotations

import logging

import pytest

from gateway import logs

TOKEN = "q3J5X0mW7bP2vKc9sLrT1yZ8aUeH4dNfGiOjBxC6E5w"


def test_the_access_log_masks_share_tokens(caplog: pytest.LogCaptureFixture) -> None:
    logs.install()
    logs.install()  # twice is once
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, logs.RedactSecrets) for f in access.filters) == 1
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", f"/share/{TOKEN}", "1.1", 303
        )
        access.info("opened /share/%s?x=1", TOKEN)
    text = caplog.text
    assert TOKEN not in text
    assert text.count("/share/[token]") == 2
    # Other paths are left alone.
    assert logs.redact("/share/view/studies/1.2.3") == "/share/view/studies/1.2.3"


def test_uvicorns_access_formatter_still_formats_masked_lines() -> None:
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/share/{TOKEN}", "1.1", 200),
        None,
    )
    assert logs.RedactSecrets().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == '127.0.0.1:5000 - "GET /share/[token] HTTP/1.1" 200 OK'
