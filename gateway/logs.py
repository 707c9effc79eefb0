"""Log hygiene: a secret that travels in a URL or a header never reaches the logs.

A share link's path carries its token (``/share/{token}``), a capability URL its
secret (``/dicomweb/cap/{secret}``), a careless client
may put an access token, a code or a PIN in a query string (``?access_token=``,
which the gateway refuses, but uvicorn's access log writes the request line
first), and an ``Authorization`` value may end up in a message. An access log
line is kept far longer and seen by more people than any of these, so the
filter masks them in every record of the server's and the gateway's loggers.
"""

from __future__ import annotations

import logging
import re

_SHARE_TOKEN = re.compile(r"(/share/|/dicomweb/cap/)[A-Za-z0-9_-]{20,}")
# Query or form parameters whose value is a credential.
_SECRET_PARAMETER = re.compile(
    r"(?i)(^|[?&;\s\"'])((?:access_token|refresh_token|id_token|code|access_code|pin|token"
    r"|code_verifier|client_secret|client_assertion|assertion|password|passphrase|launch)=)[^&;#\s\"']+"
)
# An Authorization header's value, however it got into a message.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn", "gateway", "")


def redact(text: str) -> str:
    text = _SHARE_TOKEN.sub(r"\1[token]", text)
    text = _SECRET_PARAMETER.sub(r"\1\2[masked]", text)
    return _CREDENTIAL.sub(r"\1\2[masked]", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Masked argument by argument: uvicorn's access formatter unpacks the arguments.
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it as it would have
        if redact(message) != message:  # a secret split between the format and an argument
            record.msg, record.args = redact(message), ()
        return True


def install() -> None:
    """Add the filter to the server's and the gateway's loggers and to their handlers, once.

    A logger's filter sees only what is logged on that logger itself, not what
    its children pass up; a handler's filter sees everything it writes. So both.
    """
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        _add(logger)
        for handler in logger.handlers:
            _add(handler)


def _add(target: logging.Filterer) -> None:
    if not any(isinstance(f, RedactSecrets) for f in target.filters):
        target.addFilter(RedactSecrets())
