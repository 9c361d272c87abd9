"""The Console: the web app where account holders sign up, manage keys, top up and read
what they spent, served by ``apimodels serve`` under ``/console``.

Server-rendered (Starlette + Jinja2, no build step). Every page calls the same service
functions as the ``/v1`` API and the CLI (``store.accounts``, ``billing``, ``topups``,
``tasks``, ``privacy``); the Console's own modules hold only what a browser needs on top:
passwords, sessions, CSRF, sign-in throttling, one-time links and mail.
"""

from .config import ConsoleConfig

__all__ = ["ConsoleConfig"]
