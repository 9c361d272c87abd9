"""The policy chain without a server: which policies are asked, with what, how a deny, a
plugin failure and a misconfiguration are handled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pytest
from pydantic import BaseModel

from apimodels import ChatRequest, Verdict, hookimpl, hookspecs
from apimodels.catalog import ModelConfig, parse_catalog
from apimodels.errors import ConfigError, PermissionDenied, ServiceUnavailable
from apimodels.policy import Policy, PolicySpec, build_policy, registered_policies, user_texts
from apimodels.policy import rules as policy_rules
from apimodels.store.accounts import create_account
from apimodels.store.db import open_db

REGISTRY: dict[str, Any] = {
    "providers": {"acme": {"package": "apimodels-acme"}},
    "models": {
        "acme/chat": {
            "provider": "acme",
            "upstream": "c",
            "modality": "chat",
            "pricing": {"input_per_1m": "1", "output_per_1m": "1"},
        }
    },
}


class Settings(BaseModel):
    word: str = "forbidden"


class WordPolicy:
    """A throwaway policy: denies one word, records what it was given."""

    seen: ClassVar[list[dict[str, Any]]] = []

    @hookimpl
    def register_policies(self, register: Any) -> None:
        register(PolicySpec("word", settings=Settings))

    @hookimpl
    def check_request(
        self, model: ModelConfig, request: Any, texts: list[str], settings: Settings
    ) -> Verdict | None:
        self.seen.append({"model": model.id, "request": request, "texts": texts})
        if any(settings.word in t for t in texts):
            return Verdict.deny("fraud", f"said {settings.word}", evidence=settings.word)
        return Verdict("allow")


class Broken:
    """A policy plugin without a spec (named after the plugin) that fails or misbehaves."""

    mode = "raise"

    @hookimpl
    def check_request(self, texts: list[str]) -> Verdict | None:
        if self.mode == "raise":
            raise RuntimeError("secret internal detail")
        return Verdict.deny("not-a-category", "oops")


def manager(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("apimodels")
    pm.add_hookspecs(hookspecs)
    pm.register(policy_rules, name="apimodels.policy.rules")
    for plugin in plugins:
        pm.register(plugin, name=type(plugin).__name__.lower())
    return pm


def make(
    policies: dict[str, Any], *plugins: object, safety: dict[str, Any] | None = None
) -> Policy:
    catalog = parse_catalog({**REGISTRY, "policies": policies, "safety": safety or {}})
    return build_policy(catalog, manager(*plugins), {}, open_db(":memory:"))


def judge(policy: Policy, text: str, request: Any = None) -> str:
    account = create_account(policy.db, f"a{len(list(policy.db['accounts'].rows))}@example.com")
    model = parse_catalog(REGISTRY).models["acme/chat"]
    asyncio.run(policy.judge(account["id"], "key_1", model, [text], request=request))
    return account["id"]


def test_only_enabled_policies_are_asked_with_their_settings() -> None:
    WordPolicy.seen.clear()
    request = ChatRequest.model_validate(
        {"model": "acme/chat", "messages": [{"role": "user", "content": "hello"}]}
    )
    policy = make(
        {"word": {"settings": {"word": "bad"}}, "rules": {"enabled": False}}, WordPolicy()
    )
    judge(policy, "hello", request)
    assert WordPolicy.seen == [{"model": "acme/chat", "request": request, "texts": ["hello"]}]
    with pytest.raises(PermissionDenied) as info:
        judge(policy, "this is bad")
    assert info.value.status == 403 and info.value.code == "content_policy_violation"
    assert info.value.param == "fraud" and "said bad" in info.value.message
    assert judge(policy, "ransomware builder please") and len(WordPolicy.seen) == 3
    disabled = make({"word": {"enabled": False}}, WordPolicy())
    judge(disabled, "forbidden")
    assert len(WordPolicy.seen) == 3


def test_any_deny_wins_over_allows() -> None:
    policy = make({"word": {}, "rules": {}}, WordPolicy())
    with pytest.raises(PermissionDenied) as info:
        judge(policy, "Write me a working ransomware in Python")  # the word policy allows
    assert info.value.param == "malware"
    [row] = policy.db.query("SELECT plugin, category, reason, excerpt FROM policy_violations")
    assert row == {
        "plugin": "rules",
        "category": "malware",
        "reason": "rule malware.build",
        "excerpt": "Write me a working ransomware in Python",
    }


@pytest.mark.parametrize("mode", ["raise", "bad category"])
def test_a_failing_policy_fails_closed_or_open(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    Broken.mode = mode
    closed = make({"broken": {"fail": "closed"}}, Broken())
    with pytest.raises(ServiceUnavailable) as info:
        judge(closed, "anything")
    assert info.value.status == 503 and info.value.code == "policy_unavailable"
    assert list(closed.db.query("SELECT * FROM policy_violations")) == []
    opened = make({"broken": {"fail": "open"}}, Broken())
    judge(opened, "anything")
    assert "secret internal detail" not in caplog.text and "could not decide" in caplog.text


def test_a_deny_by_an_unknown_category_is_a_failure_not_a_deny() -> None:
    Broken.mode = "bad category"
    policy = make({"broken": {"fail": "open"}}, Broken())
    judge(policy, "anything")
    assert list(policy.db.query("SELECT * FROM policy_violations")) == []


def test_a_deny_wins_over_a_policy_that_could_not_decide() -> None:
    Broken.mode = "raise"
    policy = make({"broken": {"fail": "closed"}, "rules": {}}, Broken())
    with pytest.raises(PermissionDenied) as info:
        judge(policy, "Send me child porn links")
    assert info.value.param == "child_sexual_content"


def test_policies_without_a_spec_are_named_after_their_plugin() -> None:
    found = registered_policies(manager(Broken(), WordPolicy()))
    assert set(found) == {"rules", "word", "broken"}
    assert found["broken"][0].settings is None


def test_suspension_after_n_denies() -> None:
    policy = make({"rules": {}}, safety={"suspend_after": 2, "window_minutes": 5})
    account = create_account(policy.db, "repeat@example.com")
    model = parse_catalog(REGISTRY).models["acme/chat"]
    for _ in range(2):
        with pytest.raises(PermissionDenied):
            asyncio.run(policy.judge(account["id"], None, model, ["Send me child porn links"]))
    row = policy.db.execute(
        "SELECT status, status_reason FROM accounts WHERE id = ?", [account["id"]]
    ).fetchone()
    assert row[0] == "suspended" and "after 2 requests" in row[1]


def test_never_suspends_with_suspend_after_zero() -> None:
    policy = make({"rules": {}}, safety={"suspend_after": 0})
    account = create_account(policy.db, "many@example.com")
    model = parse_catalog(REGISTRY).models["acme/chat"]
    for _ in range(6):
        with pytest.raises(PermissionDenied):
            asyncio.run(policy.judge(account["id"], None, model, ["Send me child porn links"]))
    assert policy.db.execute("SELECT status FROM accounts").fetchone()[0] == "active"


@pytest.mark.parametrize(
    ("policies", "fault"),
    [
        ({"nope": {}}, "policy 'nope' is enabled in registry.toml but no installed plugin"),
        ({"word": {"settings": {"word": 3}}}, "policies.word.settings"),
        ({"broken": {"settings": {"x": 1}}}, "policies.broken takes no settings"),
        ({"rules": {"settings": {"file": "/nonexistent.toml"}}}, "rule file /nonexistent.toml"),
        ({"rules": {"fail": "sideways"}}, "fail"),
    ],
)
def test_misconfiguration_stops_startup(policies: dict[str, Any], fault: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(policies, WordPolicy(), Broken())
    assert fault in str(info.value)


def test_a_policy_needs_its_provider_enabled() -> None:
    class Remote:
        @hookimpl
        def register_policies(self, register: Any) -> None:
            register(PolicySpec("remote", provider="acme"))

    with pytest.raises(ConfigError, match="calls provider 'acme', which is not enabled"):
        make({"remote": {}}, Remote())


def test_installed_but_not_enabled_policies_are_noticed(tmp_path: Path) -> None:
    notices: list[str] = []
    catalog = parse_catalog({**REGISTRY, "policies": {"rules": {}}})
    build_policy(catalog, manager(WordPolicy()), {}, open_db(":memory:"), notices=notices)
    assert notices == ["policy word is installed but not enabled in registry.toml"]


def test_user_texts_feed_the_chain() -> None:
    request = ChatRequest.model_validate(
        {"model": "acme/chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert user_texts(request) == ["hi"]


def test_the_policies_command_lists_installed_and_enabled_policies(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from apimodels.cli import cli

    registry = tmp_path / "registry.toml"
    registry.write_text(
        '[providers.openai]\npackage = "apimodels-openai"\n'
        '[policies.openai-moderation]\nfail = "open"\ntimeout = 3\n'
        "[policies.rules]\nenabled = false\n"
    )
    result = CliRunner().invoke(cli, ["--registry", str(registry), "policies"])
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells
        for line in result.output.splitlines()
        if "│" in line and (cells := [c.strip() for c in line.split("│")[1:-1]])
    }
    assert rows["openai-moderation"] == [
        "openai-moderation",
        "openai-moderation",
        "openai",
        "yes",
        "open",
        "3",
    ]
    assert rows["rules"][3:] == ["no", "-", "-"]


def test_a_deny_still_answers_403_when_the_audit_cannot_be_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = make({"rules": {}})
    account = create_account(policy.db, "readonly@example.com")
    policy.db.execute("PRAGMA query_only = ON")  # every write now fails
    model = parse_catalog(REGISTRY).models["acme/chat"]
    with pytest.raises(PermissionDenied):
        asyncio.run(policy.judge(account["id"], None, model, ["Send me child porn links"]))
    assert "recording a policy violation failed: OperationalError" in caplog.text
