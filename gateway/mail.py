"""Outgoing mail: share links to their recipients, when SMTP is configured.

The standard library's ``smtplib`` is blocking, so each message goes out on a
worker thread. A share link's mail never carries the PIN: whoever reads the
mailbox must still get the PIN from the patient by another way.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.utils import make_msgid

import anyio

from gateway.settings import Settings

logger = logging.getLogger(__name__)


class MailError(Exception):
    """The message could not be handed to the mail server."""


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    async def send(self, to: str, subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain="image-share")
        message.set_content(text)
        try:
            await anyio.to_thread.run_sync(self._deliver, message)
        except (OSError, smtplib.SMTPException) as exc:
            # The server's own words may carry addresses or internals: log, do not show.
            logger.warning("mail to the share recipient was not sent: %s", exc)
            raise MailError("The mail server did not take the message.") from None

    def _deliver(self, message: EmailMessage) -> None:
        settings = self.settings
        host, port, timeout = settings.smtp_host or "", settings.smtp_port, settings.smtp_timeout
        smtp: smtplib.SMTP
        if settings.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
        with smtp:
            if settings.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username and settings.smtp_password:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(message)


def share_message(
    *, link: str, patient_name: str, label: str, expires: datetime, studies: int
) -> tuple[str, str]:
    """Subject and text of the mail that carries a share link (and never its PIN)."""
    sender = patient_name or "A patient"
    greeting = f"Hello {label}," if label else "Hello,"
    plural = "study" if studies == 1 else "studies"
    text = (
        f"{greeting}\n\n"
        f"{sender} has shared {studies} imaging {plural} with you.\n\n"
        f"Open this link to view the images and reports, or to download them:\n{link}\n\n"
        "You will be asked for a 6-digit PIN. The patient gives it to you separately;\n"
        "it is not in this message. After five wrong PINs the link locks.\n\n"
        f"The link works until {expires.strftime('%Y-%m-%d %H:%M UTC')}, "
        "unless the patient withdraws it sooner.\n"
        "If you did not expect this message, you can ignore it.\n"
    )
    return f"{sender} shared imaging studies with you", text
