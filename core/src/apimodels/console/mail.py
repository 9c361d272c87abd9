"""Mail to account holders: a small notifier that sends through SMTP, and the sandbox's
local SMTP sink (aiosmtpd) whose messages the Console shows at ``/console/dev/mail``.

Sending runs in a worker thread (``smtplib`` blocks). A mail that cannot be sent is logged
by its kind and recipient's account, never with its link, and the action that wanted it
goes on: a holder can ask for another link.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import logging
import smtplib
import socket
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP

log = logging.getLogger("apimodels.console")


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    body: str
    kind: str  # verify | reset | receipt | low_balance | suspended | terms


class Notifier:
    """Sends mail through one SMTP server (``host`` None: mail is dropped, with a log line)."""

    def __init__(
        self,
        host: str | None,
        port: int,
        sender: str,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.starttls = starttls
        self.username = username
        self.password = password

    def _send(self, mail: Mail) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["X-Apimodels-Kind"] = mail.kind
        message.set_content(mail.body)
        assert self.host is not None
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
            smtp.send_message(message)

    async def send(self, mail: Mail) -> bool:
        """Send ``mail``; False (and a log line) when it could not be."""
        if self.host is None:
            log.warning("console mail not sent (no [console] smtp_host): %s", mail.kind)
            return False
        try:
            await asyncio.to_thread(self._send, mail)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("console mail %s not sent: %s", mail.kind, type(exc).__name__)
            return False
        return True


@dataclass
class _Inbox:
    """The sink's handler: keeps the last messages it received, newest last."""

    messages: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    seq: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = BytesParser(policy=email.policy.default).parsebytes(envelope.content)
        body = parsed.get_body(preferencelist=("plain",))
        self.seq += 1
        self.messages.append(
            {
                "id": self.seq,
                "to": ", ".join(envelope.rcpt_tos),
                "subject": str(parsed["Subject"]),
                "kind": str(parsed["X-Apimodels-Kind"] or ""),
                "body": body.get_content() if body is not None else "",
            }
        )
        return "250 Message accepted for delivery"


class MailSink:
    """A local SMTP server on 127.0.0.1 that keeps what it receives (sandbox mode, tests).

    Its socket is bound at once (the port is known before the server starts); it serves in
    the event loop that calls ``start``."""

    def __init__(self) -> None:
        self.inbox = _Inbox()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SMTP(self.inbox), sock=self.sock)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        self.sock.close()

    def messages(self) -> list[dict[str, Any]]:
        return list(self.inbox.messages)
