"""Mail: through a real SMTP server (aiosmtpd on loopback) when one is configured, else into the mail log."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from netutil import free_port

from archipelag.accounts.mail import Mail, Mailer, reset_mail, verification_mail
from archipelag.settings import Settings


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def test_mail_goes_through_smtp_when_configured(tmp_path: Path, smtp: tuple[int, Inbox]) -> None:
    port, inbox = smtp
    settings = Settings(state_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
                        smtp_from="net@example.org", public_api_url="https://api.example.org/")
    asyncio.run(Mailer(settings).send(verification_mail(settings, "ann@example.org", "tok123")))
    [envelope] = inbox.messages
    assert envelope.rcpt_tos == ["ann@example.org"] and envelope.mail_from == "net@example.org"
    body = email.message_from_bytes(envelope.content, policy=email.policy.default).get_content()
    assert "https://api.example.org/verify?token=tok123" in body
    assert not (tmp_path / "logs" / "mail.log").exists()


def test_without_smtp_mail_is_written_to_the_mail_log(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    asyncio.run(Mailer(settings).send(reset_mail(settings, "bo@example.org", "reset-token-1")))
    text = (tmp_path / "logs" / "mail.log").read_text()
    assert "to: bo@example.org" in text and "reset-token-1" in text


def test_a_mail_server_that_is_down_fails_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(state_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_starttls=False)
    asyncio.run(Mailer(settings).send(Mail("cy@example.org", "hi", "secret-link")))  # no exception
    assert "could not be sent" in caplog.text and "secret-link" not in caplog.text
