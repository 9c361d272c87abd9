"""The built-in ``rules`` policy: the core's own policy plugin, registered like the default
hooks. Patterns, word lists, per-modality scopes and allow-lists, per category, from a rule
file (``default_rules.toml`` unless ``[policies.rules.settings] file`` names another),
compiled once at startup (see ``ruleset``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..catalog import ModelConfig
from ..hookspecs import hookimpl
from ..providers.types import Verdict
from .ruleset import DEFAULT_RULES, RuleSet
from .spec import PolicySpec

NAME = "rules"


class RulesSettings(BaseModel):
    """``[policies.rules.settings]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path = Field(default=DEFAULT_RULES, description="a rule file replacing the default set")
    allow: list[str] = Field(
        default_factory=list, description="more allow-listed phrases, added to the file's"
    )

    def model_post_init(self, context: object) -> None:
        self.rules  # noqa: B018  compiled once, at startup: a bad rule file fails there

    @cached_property
    def rules(self) -> RuleSet:
        """The compiled rule set. Cached in the instance's ``__dict__``, so every request
        reads it as a plain attribute: a pydantic private attribute costs a failed lookup
        and ``BaseModel.__getattr__`` on each read."""
        return RuleSet.load(self.file, self.allow)


@hookimpl
def register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(
        PolicySpec(
            NAME,
            settings=RulesSettings,
            description="Local rules per category: word lists, patterns, allow-lists",
        )
    )


@hookimpl
def check_request(model: ModelConfig, texts: list[str], settings: RulesSettings) -> Verdict | None:
    if not texts:
        return None
    match = settings.rules.match("\n".join(texts), model.modality)
    if match is None:
        return None
    return Verdict.deny(match.category, f"rule {match.rule}", evidence=match.evidence)
