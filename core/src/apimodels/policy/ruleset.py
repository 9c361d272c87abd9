"""The engine of the built-in rules: a rule file compiled once into per-modality indexes.

Matching is two stages, so that the common case (a benign prompt) costs one pass:

1. the lowercased text is split into words (``bytes.translate`` + ``bytes.split``, in C)
   and intersected with the set of words that can start a rule: a phrase's first word, a
   pattern rule's anchors; a rule with ``requires`` also needs one of those words. Most
   prompts stop here.
2. only the rules whose words are all present are confirmed with their regular
   expressions, only within ``WINDOW`` characters of the words that made them candidates,
   over the text with the allow-listed phrases found there blanked out.

Rules see lowercased text, NFKC-normalized when it is not ASCII (full-width letters,
Unicode spaces and dashes, soft hyphens and zero-width characters cannot split a word).
They cannot tell names from words, meaning from wording, or see through spelling tricks
(``r@nsomware``, spaced letters, look-alike letters of other scripts); docs/
self-hosting.md says so too.
"""

from __future__ import annotations

import re
import string
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..schemas import Modality
from .spec import CATEGORIES

DEFAULT_RULES = Path(__file__).with_name("default_rules.toml")

#: ASCII punctuation becomes a word separator; everything else stays in its word. On bytes:
#: UTF-8 never puts an ASCII byte inside a multi-byte character, and ``bytes.translate``
#: stays fast on any text (``str.translate`` is slow once the text is not ASCII).
_SEPARATORS = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
#: A pattern's match must lie within this many characters of one of its anchors (or a
#: phrase within this many characters of its first word): the regexes only search there.
WINDOW = 200
#: How much context either side of a match is kept as evidence for the audit.
_EVIDENCE = 40


#: Characters that join or hide nothing a reader sees: soft hyphens, zero-width ones.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]")
#: Unicode spaces and punctuation separate words like ASCII's: Latin-1's (no-break space,
#: guillemets...), the general punctuation block (en/em spaces, dashes, quotes, ellipsis),
#: supplemental and CJK punctuation, small forms. An explicit class: a ``[^\w...]`` class
#: costs the regex engine a Unicode lookup per character, this one does not.
_UNICODE_SEPARATORS = re.compile(
    "[\u00a0-\u00bf\u00d7\u00f7\u1680\u2000-\u206f\u2e00-\u2e7f\u3000-\u303f\ufe10-\ufe6f]+"
)


def normalized(text: str) -> str:
    """Non-ASCII text as the rules read it: NFKC (full-width and styled letters become
    plain ones), invisible characters dropped, Unicode separators made spaces."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return _UNICODE_SEPARATORS.sub(" ", text)


def words(text: str) -> list[bytes]:
    """The words of lowercased text, split as rules see them (UTF-8 bytes)."""
    return text.encode().translate(_SEPARATORS).split()


def _phrase_regex(phrase: str, *, leading_boundary: bool = True) -> str:
    body = r"[\W_]+".join(re.escape(w.decode()) for w in words(phrase.lower())) + r"\b"
    # Without the leading ``\b`` the pattern starts with a literal, which ``re`` scans for
    # quickly; the caller then checks the boundary itself.
    return r"\b" + body if leading_boundary else body


def _first_and_rest(phrase: str) -> tuple[bytes, frozenset[bytes]]:
    first, *rest = words(phrase.lower())
    return first, frozenset(rest)


def _occurrences(text: str, word: str) -> list[int]:
    """Where ``word`` stands as a whole word in ``text``."""
    found, at, size = [], text.find(word), len(word)
    while at >= 0:
        before = text[at - 1] if at else " "
        after = text[at + size] if at + size < len(text) else " "
        if not before.isalnum() and not after.isalnum():
            found.append(at)
        at = text.find(word, at + size)
    return found


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleDef(_Strict):
    """One ``[[rules]]`` entry of a rule file."""

    id: Annotated[str, Field(min_length=1)]
    category: str
    modalities: list[Modality] = Field(default_factory=list)  # empty: every modality
    words: list[str] = Field(default_factory=list)  # any of these phrases denies
    anchors: list[str] = Field(default_factory=list)  # patterns are tried only with one
    patterns: list[str] = Field(default_factory=list)  # any match denies
    requires: list[str] = Field(default_factory=list)  # and one of these words must appear
    # Patterns see the text as written, not lowercased (names: ``[A-Z][a-z]+``); use
    # ``(?i:...)`` for their parts that should ignore case.
    case_sensitive: bool = False

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORIES:
            raise ValueError(f"unknown category {value!r}; one of {', '.join(CATEGORIES)}")
        return value

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _has_a_trigger(self) -> RuleDef:
        if not self.words and not self.patterns:
            raise ValueError(f"rule {self.id}: give words or patterns")
        if self.patterns and not self.anchors:
            raise ValueError(
                f"rule {self.id}: patterns need anchors (words one of which must appear)"
            )
        if any(len(words(a.lower())) != 1 for a in [*self.anchors, *self.requires]):
            raise ValueError(f"rule {self.id}: an anchor or a required word is one word")
        if any(not words(w.lower()) for w in self.words):
            raise ValueError(f"rule {self.id}: an empty phrase in words")
        if self.case_sensitive and self.words:
            raise ValueError(f"rule {self.id}: a case-sensitive rule takes patterns only")
        return self


#: ``(?&name)`` in a pattern stands for the fragment ``name``. Python's ``re`` has no ``(?&``
#: (PCRE's "the pattern named"), so it can mean nothing else in a pattern.
_FRAGMENT = re.compile(r"\(\?&(\w+)\)")


def _expanded(pattern: str, fragments: dict[str, str], where: str) -> str:
    def one(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in fragments:
            raise ValueError(f"{where}: unknown fragment {name!r} (define it above its use)")
        return fragments[name]

    return _FRAGMENT.sub(one, pattern)


def _fragment(name: str, alternatives: list[str], done: dict[str, str]) -> str:
    parts = []
    for alternative in alternatives:
        part = _expanded(alternative, done, f"fragment {name}")
        try:
            re.compile(part)
        except re.error as exc:
            raise ValueError(f"fragment {name}: {alternative!r}: {exc}") from None
        parts.append(part)
    return "(?:" + "|".join(parts) + ")"


class RuleFile(_Strict):
    """A rule file: ``allow`` phrases (blanked out before matching), ``fragments`` (named
    alternatives the patterns use as ``(?&name)``) and ``[[rules]]``."""

    allow: list[str] = Field(default_factory=list)
    fragments: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[RuleDef] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _expand_fragments(cls, data: object) -> object:
        """Each ``(?&name)`` in a pattern becomes ``(?:one|of|its|alternatives)``; a fragment
        may use the fragments above it. Done before the rules are validated, so a rule's
        patterns are compiled (and any fault reported) as they will be matched."""
        if not isinstance(data, dict):
            return data  # the model's own validation says what is wrong
        done: dict[str, str] = {}
        fragments = data.get("fragments")
        for name, alternatives in fragments.items() if isinstance(fragments, dict) else ():
            if not isinstance(alternatives, list) or not all(
                isinstance(a, str) for a in alternatives
            ):
                return data  # the field's own validation says what is wrong
            done[name] = _fragment(name, alternatives, done)
        rules = data.get("rules")
        if not isinstance(rules, list):
            return data
        expanded = []
        for rule in rules:
            patterns = rule.get("patterns") if isinstance(rule, dict) else None
            if isinstance(patterns, list):
                where = f"rule {rule.get('id')}"
                patterns = [
                    _expanded(p, done, where) if isinstance(p, str) else p for p in patterns
                ]
                rule = {**rule, "patterns": patterns}
            expanded.append(rule)
        return {**data, "rules": expanded}

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} appears twice")
            seen.add(rule.id)
        return self


@dataclass(frozen=True, slots=True)
class Match:
    """The first rule a text breaks: its id, its category and the words around the match."""

    rule: str
    category: str
    evidence: str


@dataclass(frozen=True, slots=True)
class _Rule:
    id: str
    category: str
    regex: re.Pattern[str]
    case_sensitive: bool
    requires: frozenset[bytes]  # empty: nothing more


class _Index:
    """The rules of one modality: first words -> (words that must also appear, rule)."""

    def __init__(self, rules: list[RuleDef]) -> None:
        self.starts: dict[bytes, list[tuple[frozenset[bytes], int]]] = {}
        self.rules: list[_Rule] = []
        for rule in rules:
            position = len(self.rules)
            parts = [_phrase_regex(w) for w in rule.words] + rule.patterns
            regex = re.compile("|".join(parts))
            requires = frozenset(w.lower().encode() for w in rule.requires)
            self.rules.append(_Rule(rule.id, rule.category, regex, rule.case_sensitive, requires))
            for phrase in rule.words:
                first, rest = _first_and_rest(phrase)
                self.starts.setdefault(first, []).append((rest, position))
            for anchor in rule.anchors:
                self.starts.setdefault(anchor.lower().encode(), []).append((frozenset(), position))
        self.keys = frozenset(self.starts)


class RuleSet:
    """A rule file compiled for matching (once, at startup)."""

    def __init__(self, rule_file: RuleFile, extra_allow: list[str] | tuple[str, ...] = ()) -> None:
        # Allow phrases, indexed like the rules: only those whose words are all present
        # are applied, each a regex of its own that starts with a literal (a fast scan).
        self.allow: dict[bytes, list[tuple[frozenset[bytes], re.Pattern[str]]]] = {}
        for phrase in [*rule_file.allow, *extra_allow]:
            first, rest = _first_and_rest(phrase)
            regex = re.compile(_phrase_regex(phrase, leading_boundary=False))
            self.allow.setdefault(first, []).append((rest, regex))
        self.allow_keys = frozenset(self.allow)
        self.indexes = {
            modality: _Index(
                [r for r in rule_file.rules if not r.modalities or modality in r.modalities]
            )
            for modality in Modality
        }
        self.size = len(rule_file.rules)

    @classmethod
    def load(
        cls, path: str | Path = DEFAULT_RULES, extra_allow: list[str] | tuple[str, ...] = ()
    ) -> RuleSet:
        """Read, validate and compile a rule file; ValueError names the file and the fault."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            return cls(RuleFile.model_validate(data), extra_allow)
        except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
            raise ValueError(f"rule file {path}: {exc}") from None

    def match(self, text: str, modality: Modality) -> Match | None:
        """The first rule ``text`` breaks for ``modality``'s models, or None."""
        index = self.indexes[modality]
        if not text.isascii():
            text = normalized(text)
        low = text.lower()
        present = set(words(low))
        hits = index.keys.intersection(present)
        if not hits:
            return None
        candidates: dict[int, set[bytes]] = {}  # rule -> the words that made it one
        for word in hits:
            for rest, position in index.starts[word]:
                requires = index.rules[position].requires
                if rest <= present and (not requires or not requires.isdisjoint(present)):
                    candidates.setdefault(position, set()).add(word)
        if not candidates:
            return None
        windows = {position: _windows(low, triggers) for position, triggers in candidates.items()}
        allowed = [
            regex
            for word in self.allow_keys.intersection(present)
            for rest, regex in self.allow[word]
            if rest <= present
        ]
        spans = [  # allowed phrases, looked for only where rules will look
            found.span()
            for start, end in _merged([w for ws in windows.values() for w in ws])
            for regex in allowed
            for found in regex.finditer(low, start, end)
            if not found.start() or not low[found.start() - 1].isalnum()  # see _phrase_regex
        ]
        if spans:  # allowed phrases become spaces: same length, same offsets
            low = _blanked(low, spans)
        cased: str | None = None
        for position in sorted(candidates):
            rule = index.rules[position]
            target = low
            if rule.case_sensitive:
                if cased is None:
                    same = len(text) == len(low)  # lower() can lengthen rare characters
                    cased = _blanked(text, spans) if spans and same else text
                target = cased
            for start, end in windows[position]:
                found = rule.regex.search(target, start, end)
                if found:
                    at, to = max(0, found.start() - _EVIDENCE), found.end() + _EVIDENCE
                    return Match(rule.id, rule.category, text[at:to])
        return None


def _blanked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the characters of ``spans`` replaced by spaces."""
    out, at = [], 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        start = max(start, at)
        out += [text[at:start], " " * (end - start)]
        at = end
    out.append(text[at:])
    return "".join(out)


def _windows(text: str, triggers: set[bytes]) -> list[tuple[int, int]]:
    """The spans within ``WINDOW`` characters of each trigger word, merged."""
    return _merged(
        [
            (max(0, at - WINDOW), at + len(word) + WINDOW)
            for word in triggers
            for at in _occurrences(text, word.decode())
        ]
    )


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
