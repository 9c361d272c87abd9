"""``[console]`` in registry.toml: the Console and the mail it sends."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ConsoleConfig(BaseModel):
    """``[console]``: on by default in sandbox mode only (``enabled`` unset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    #: The SMTP server mail goes through; unset outside the sandbox: no mail is sent (links
    #: are logged for the operator instead). In sandbox mode a local sink receives it.
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    smtp_starttls: bool = False
    smtp_username_env: str | None = None  # the variable holding the SMTP user name
    smtp_password_env: str | None = None  # ... and its password
    mail_from: str = "apimodels <no-reply@localhost>"
    #: Failed sign-ins allowed per email address (and 4x that per client address) in the
    #: window; past it, sign-in answers 429 until the window slides.
    login_attempts: Annotated[int, Field(ge=1)] = 5
    login_window_minutes: Annotated[int, Field(ge=1)] = 15
    session_days: Annotated[int, Field(ge=1)] = 30
    #: A mail goes out when an account's balance falls below this (each account may set
    #: its own on the Account page).
    low_balance_usd: Decimal = Decimal("1")
    #: Where the Terms and the Privacy Policy are (``terms/VERSION.md``,
    #: ``privacy/VERSION.md``), relative to the database's folder (apimodels.console.legal).
    legal_dir: str = "legal"
    #: How often each serving process looks for receipts, low balances and suspensions to
    #: mail (apimodels.console.notices).
    notice_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
