"""The Terms and the Privacy Policy: versioned Markdown documents in the data folder, and
each holder's acceptances.

``{legal_dir}/terms/{version}.md`` and ``{legal_dir}/privacy/{version}.md``: the version is
the file's name (a date, ``2026-12-01``, sorts right); the greatest is in force. They are
read once at startup: the operator publishes a version by adding its file and restarting.
The version in force at sign-up is accepted with it and recorded; a holder who has not
accepted the version in force sees a notice on every page until they do, and one who had
accepted an earlier Terms is mailed once (``notices``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from markdown_it import MarkdownIt
from markupsafe import Markup

from ..store.db import utcnow

DOCUMENTS = {"terms": "Terms of Service", "privacy": "Privacy Policy"}


@dataclass(frozen=True, slots=True)
class Document:
    kind: str  # terms | privacy
    version: str
    html: Markup  # rendered once; raw HTML in the Markdown is escaped, never passed through

    @property
    def title(self) -> str:
        return DOCUMENTS[self.kind]


class Legal:
    def __init__(self, folder: Path | None) -> None:
        self.current: dict[str, Document] = {}
        if folder is None:
            return
        md = MarkdownIt("commonmark", {"html": False})
        for kind in DOCUMENTS:
            versions = sorted((folder / kind).glob("*.md")) if (folder / kind).is_dir() else []
            if versions:
                path = versions[-1]
                self.current[kind] = Document(kind, path.stem, Markup(md.render(path.read_text())))

    def accept(
        self, db: sqlite_utils.Database, account_id: str, kinds: list[str], ip: str
    ) -> list[Document]:
        """Record the account's acceptance of the versions in force of ``kinds``."""
        accepted = [self.current[k] for k in kinds if k in self.current]
        with db.conn:
            for doc in accepted:
                db.execute(
                    "INSERT INTO console_acceptances (account_id, document, version, accepted_at,"
                    " ip) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, document, version)"
                    " DO NOTHING",
                    [account_id, doc.kind, doc.version, utcnow(), ip],
                )
        return accepted

    def pending(self, db: sqlite_utils.Database, account_id: str) -> list[Document]:
        """The documents in force that the account has not accepted."""
        if not self.current:
            return []
        done = {
            (r[0], r[1])
            for r in db.execute(
                "SELECT document, version FROM console_acceptances WHERE account_id = ?",
                [account_id],
            ).fetchall()
        }
        return [d for d in self.current.values() if (d.kind, d.version) not in done]

    @staticmethod
    def history(db: sqlite_utils.Database, account_id: str) -> list[dict[str, Any]]:
        return list(
            db.query(
                "SELECT document, version, accepted_at FROM console_acceptances"
                " WHERE account_id = ? ORDER BY accepted_at DESC",
                [account_id],
            )
        )
