"""The Console's languages: English (the source) and Simplified Chinese, from gettext
catalogs kept as Babel ``.po`` files in ``locales/`` (compiled in memory once at startup,
so no binary ``.mo`` is committed). The language is the ``am_lang`` cookie set by the
switch in the page, else the browser's ``Accept-Language``, else English. Amounts stay in
USD (with the CNY amount of an Alipay order), whatever the language.
"""

from __future__ import annotations

import gettext
from contextvars import ContextVar
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALES = Path(__file__).parent / "locales"
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}
DEFAULT = "en"
COOKIE = "am_lang"
#: The language of the request being rendered (set by the page wrapper).
current: ContextVar[str] = ContextVar("console_language", default=DEFAULT)


def _load() -> dict[str, gettext.NullTranslations]:
    out: dict[str, gettext.NullTranslations] = {DEFAULT: gettext.NullTranslations()}
    for code in LANGUAGES:
        path = LOCALES / code / "LC_MESSAGES" / "messages.po"
        if code == DEFAULT or not path.exists():
            continue
        with path.open("rb") as f:
            catalog = read_po(f, locale=code)
        buffer = BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        out[code] = gettext.GNUTranslations(buffer)
    return out


_TRANSLATIONS = _load()


def choose(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie  # type: ignore[return-value]
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh_CN"
        if tag.startswith("en"):
            return "en"
    return DEFAULT


def _(message: str) -> str:
    """``message`` in the current request's language."""
    return _TRANSLATIONS.get(current.get(), _TRANSLATIONS[DEFAULT]).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _TRANSLATIONS.get(current.get(), _TRANSLATIONS[DEFAULT]).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Marks ``message`` for the catalog; translated where it is shown."""
    return message


#: Words the pages show from data (statuses, methods, documents), translated at display.
SHOWN_FROM_DATA = (
    N_("succeeded"), N_("failed"), N_("pending"), N_("creating"), N_("open"),
    N_("processing"), N_("paid"), N_("expired"), N_("queued"), N_("running"),
    N_("canceled"), N_("Card"), N_("Alipay"), N_("Terms of Service"), N_("Privacy Policy"),
)  # fmt: skip
