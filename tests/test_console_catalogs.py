"""The Console's gettext catalogs: the template of messages is current (extracted again from
the code and templates, it is the same) and Simplified Chinese translates every message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

CONSOLE = Path(__file__).resolve().parents[1] / "core" / "src" / "apimodels" / "console"
LOCALES = CONSOLE / "locales"


def _ids(path: Path) -> set[str]:
    with path.open("rb") as f:
        return {m.id for m in read_po(f) if m.id}


def test_the_message_template_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "messages.pot"
    subprocess.run(
        [sys.executable, "-m", "babel.messages.frontend", "extract", "-F",
         str(CONSOLE / "babel.cfg"), "-k", "N_", "--no-location", "--sort-output",
         "--project", "apimodels", "--omit-header", "-o", str(fresh), str(CONSOLE)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert _ids(fresh) == _ids(LOCALES / "messages.pot"), (
        "run the pybabel extract line at the top of core/src/apimodels/console/babel.cfg"
    )


def test_simplified_chinese_translates_every_message() -> None:
    with (LOCALES / "zh_CN" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    untranslated = [m.id for m in catalog if m.id and not m.string]
    assert untranslated == []
    assert {m.id for m in catalog if m.id} == _ids(LOCALES / "messages.pot")
    # Placeholders survive translation.
    for m in catalog:
        if m.id and "%(amount)s" in m.id:
            assert "%(amount)s" in m.string
