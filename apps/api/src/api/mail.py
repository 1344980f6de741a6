"""Outgoing mail, behind one small interface (``Mailer``).

The default, :class:`ConsoleMailer`, is for development: it prints the message (the
verification link included) to standard output, never to the structured log, which
must not carry tokens. :class:`MemoryMailer` keeps the messages (tests). A real
sender (SMTP, a provider's API) implements ``send`` and is set on
``app.state.mailer``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str
    #: For tests and senders that template: e.g. {"kind": "verify_email", "token": ...}.
    data: dict[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # the body holds a token
        return f"Mail(to={self.to!r}, subject={self.subject!r})"


class Mailer(Protocol):
    def send(self, mail: Mail) -> None: ...


class ConsoleMailer:
    """Prints each mail to stdout (development)."""

    def send(self, mail: Mail) -> None:
        print(
            f"--- mail to {mail.to}: {mail.subject}\n{mail.body}\n---", file=sys.stdout, flush=True
        )


class MemoryMailer:
    """Keeps every mail in ``sent`` (tests)."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []

    def send(self, mail: Mail) -> None:
        self.sent.append(mail)


def verification_mail(to: str, token: str, public_url: str) -> Mail:
    link = f"{public_url.rstrip('/')}/verify-email?token={token}"
    return Mail(
        to=to,
        subject="Verify your email address",
        body=(
            "Confirm this address for your AutoML account:\n"
            f'{link}\n\nOr POST /v1/auth/verify-email with {{"token": "{token}"}}.\n'
            "The link expires in 48 hours."
        ),
        data={"kind": "verify_email", "token": token},
    )
