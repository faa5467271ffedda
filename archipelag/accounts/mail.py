"""Mail: the messages that carry sign-up verification and password-reset links.

Sent through SMTP when ``smtp_host`` is set; otherwise written to ``state_dir/logs/mail.log`` on the
coordinator (and announced in its log without the link), so a single-machine network works without mail.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from archipelag.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def outbox(self) -> Path:
        return self._settings.state_dir / "logs" / "mail.log"

    async def send(self, mail: Mail) -> None:
        """Send (or write) ``mail``; a failure is logged, never raised: the answer to the request that caused
        the mail must not tell whether an account exists."""
        try:
            await asyncio.to_thread(self._deliver, mail)
        except Exception:
            log.warning("mail to an account could not be sent", exc_info=True)

    def _deliver(self, mail: Mail) -> None:
        settings = self._settings
        if not settings.smtp_host:
            self.outbox.parent.mkdir(parents=True, exist_ok=True)
            with self.outbox.open("a") as out:
                out.write(f"--- {datetime.now(UTC).isoformat()} to: {mail.to}\nsubject: {mail.subject}\n\n"
                          f"{mail.body}\n\n")
            log.info("no SMTP server configured: mail %r written to %s", mail.subject, self.outbox)
            return
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = settings.smtp_from, mail.to, mail.subject
        message.set_content(mail.body)
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username and settings.smtp_password:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(message)


def verification_mail(settings: Settings, to: str, token: str) -> Mail:
    link = f"{settings.public_url()}/verify?token={token}"  # the web app's page, which verifies on opening
    return Mail(to, "Verify your Archipelag account",
                f"Welcome to Archipelag. Open this link to verify your address and receive your credits:\n\n{link}\n\n"
                f"Or send the token to POST /api/v1/auth/verify: {token}\n"
                f"It works once, for {settings.verify_link_ttl_s / 3600:.0f} hours.")


def reset_mail(settings: Settings, to: str, token: str) -> Mail:
    link = f"{settings.public_url()}/reset/confirm?token={token}"
    return Mail(to, "Reset your Archipelag password",
                "Someone asked to reset the password of your Archipelag account. If it was you, open this link "
                f"to set a new one:\n\n{link}\n\nor send this token with a new password to "
                f"POST /api/v1/auth/password-reset/confirm:\n\n{token}\n\n"
                f"It works once, for {settings.reset_link_ttl_s / 60:.0f} minutes. If it was not you, ignore this.")
