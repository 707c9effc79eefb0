"""Log hygiene: a secret that travels in a URL never reaches the logs.

A share link's path carries its token (``/share/{token}``), and an access log
line is kept far longer and seen by more people than the link itself, so the
filter masks the token in every record of the server's loggers.
"""

from __future__ import annotations

import logging
import re

_SHARE_TOKEN = re.compile(r"(/share/)[A-Za-z0-9_-]{20,}")
# uvicorn logs request paths; the gateway's own code never logs a token.
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    return _SHARE_TOKEN.sub(r"\1[token]", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Masked argument by argument: uvicorn's access formatter unpacks the arguments.
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        message = record.getMessage()
        if redact(message) != message:  # a token split between the format and an argument
            record.msg, record.args = redact(message), ()
        return True


def install() -> None:
    """Add the filter to the server's loggers, once per process."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
