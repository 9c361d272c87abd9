"""Models that retire: dates in the catalog, headers on a deprecated model's calls, 410 once
retired (nothing held, nothing sent), and a shipped catalog that never lists a retired model."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import openai
import pytest

from apimodels.catalog import load_catalog
from apimodels.server import assemble
from support import ROOT, SIM_KEY, Gateway, Simulator, gateway_of_its_own, registry_for

TODAY = datetime.now(UTC).date()
SOON = TODAY + timedelta(days=30)
PAST = TODAY - timedelta(days=1)

DATES = f"""
[models."openai/gpt-4o-mini"]
deprecated_at = {PAST - timedelta(days=90)}
retires_at = {SOON}
replacement = "openai/gpt-6-luna"

[models."openai/gpt-4.1"]
retires_at = {PAST}
replacement = "openai/gpt-6.1-sol"

[models."openai/whisper-1"]
deprecated_at = {TODAY + timedelta(days=7)}
retires_at = {SOON}
"""


def dated(text: str) -> str:
    """The registry's text with the dates above merged into three models' tables."""
    for block in DATES.strip().split("\n\n"):
        header, *lines = block.splitlines()
        text = text.replace(header + "\n", header + "\n" + "\n".join(lines) + "\n", 1)
    return text


@pytest.fixture(scope="module")
def dated_gateway(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with gateway_of_its_own(simulator, tmp_path_factory.mktemp("lifecycle"), dated) as gateway:
        yield gateway


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_a_deprecated_model_answers_with_its_dates_and_successor(dated_gateway: Gateway) -> None:
    gw = dated_gateway
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(**chat("openai/gpt-4o-mini"))
    assert raw.http_response.status_code == 200
    headers = raw.http_response.headers
    deprecated = datetime.fromtimestamp(int(headers["deprecation"].removeprefix("@")), UTC)
    assert deprecated.date() == PAST - timedelta(days=90)
    assert parsedate_to_datetime(headers["sunset"]).date() == SOON
    assert headers["link"] == '</v1/models/openai/gpt-6-luna>; rel="successor-version"'
    # The charge is the model's own: a deprecation never changes the price.
    assert headers["x-apimodels-cost"] != "0.000000"


def test_dates_are_listed_and_an_undated_model_carries_no_headers(
    dated_gateway: Gateway,
) -> None:
    gw = dated_gateway
    auth = {"authorization": f"Bearer {gw.key}"}
    models = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models", headers=auth).json()["data"]}
    mini = models["openai/gpt-4o-mini"]
    assert (mini["retires_at"], mini["replacement"]) == (SOON.isoformat(), "openai/gpt-6-luna")
    assert models["openai/gpt-6-luna"]["retires_at"] is None
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("openai/gpt-6-luna"), headers=auth)
    assert r.status_code == 200 and "deprecation" not in r.headers and "sunset" not in r.headers


def test_a_model_before_its_deprecation_date_gets_only_its_sunset(dated_gateway: Gateway) -> None:
    gw = dated_gateway
    route = gw.server.gateway.routes["openai/whisper-1"]
    assert route.lifecycle is not None
    headers = dict(route.lifecycle.at(datetime.now(UTC).timestamp()))
    assert headers == {}  # deprecated only from next week: nothing yet
    later = datetime.combine(TODAY + timedelta(days=8), datetime.min.time(), UTC).timestamp()
    assert set(dict(route.lifecycle.at(later))) == {b"deprecation", b"sunset"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/tasks"])
def test_a_retired_model_answers_410_and_costs_nothing(
    dated_gateway: Gateway, simulator: Simulator, path: str
) -> None:
    gw = dated_gateway
    before = simulator.received()
    body = (
        chat("openai/gpt-4.1")
        if path.endswith("completions")
        else {
            "model": "openai/gpt-4.1",
            "input": chat("openai/gpt-4.1"),
        }
    )
    balance = gw.ledger.balance(gw.account_id)
    r = httpx.post(f"{gw.url}{path}", json=body, headers={"authorization": f"Bearer {gw.key}"})
    assert r.status_code == 410, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("model_retired", "model")
    assert f"retired on {PAST}" in error["message"] and "openai/gpt-6.1-sol" in error["message"]
    assert simulator.received() == before
    assert gw.ledger.balance(gw.account_id) == balance


def test_the_sdk_raises_its_own_error_for_410(dated_gateway: Gateway) -> None:
    gw = dated_gateway
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)
    with client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**chat("openai/gpt-4.1"))
    assert caught.value.status_code == 410


def test_startup_warns_about_models_retiring_within_two_weeks(tmp_path: Path) -> None:
    registry = registry_for("http://127.0.0.1:9", tmp_path)
    text = registry.read_text().replace(
        '[models."openai/gpt-4o"]\n',
        f'[models."openai/gpt-4o"]\nretires_at = {TODAY + timedelta(days=10)}\n',
    )
    registry.write_text(text)
    server = assemble(registry, tmp_path / "g.db", environ={"OPENAI_API_KEY": SIM_KEY})
    assert any(
        n.startswith("model openai/gpt-4o retires on") and "in 10 days" in n
        for n in server.gateway.notices
    )


def test_a_replacement_must_be_in_the_catalog(tmp_path: Path) -> None:
    registry = registry_for("http://127.0.0.1:9", tmp_path)
    text = registry.read_text().replace(
        '[models."openai/gpt-4o"]\n', '[models."openai/gpt-4o"]\nreplacement = "openai/gpt-9"\n'
    )
    registry.write_text(text)
    with pytest.raises(Exception, match="replacement 'openai/gpt-9'"):
        load_catalog(registry)


def test_models_check_fails_on_a_retired_model(tmp_path: Path) -> None:
    registry = registry_for("http://127.0.0.1:9", tmp_path)  # without the shipped dates
    text = registry.read_text().replace(
        '[models."openai/gpt-4o"]\n', f'[models."openai/gpt-4o"]\nretires_at = {PAST}\n', 1
    )
    registry.write_text(text)
    cli = [sys.executable, "-m", "apimodels.cli", "--registry", str(registry), "models"]
    out = subprocess.run([*cli, "--check"], capture_output=True, text=True)
    assert out.returncode == 1 and f"openai/gpt-4o retired on {PAST}" in out.stdout
    listed = subprocess.run([*cli, "--deprecated"], capture_output=True, text=True)
    assert "retired (410)" in listed.stdout


def test_models_check_covers_the_models_of_a_disabled_provider(tmp_path: Path) -> None:
    """The shipped Groq model is listed but off: once retired, the check still fails, so
    enabling its provider later cannot bring a retired model back."""
    registry = registry_for("http://127.0.0.1:9", tmp_path)
    groq = '[models."groq/llama-3.3-70b-versatile"]\n'
    registry.write_text(registry.read_text().replace(groq, f"{groq}retires_at = {PAST}\n", 1))
    assert not load_catalog(registry).providers["groq"].enabled
    cli = [sys.executable, "-m", "apimodels.cli", "--registry", str(registry), "models"]
    out = subprocess.run([*cli, "--check"], capture_output=True, text=True)
    assert out.returncode == 1 and f"groq/llama-3.3-70b-versatile retired on {PAST}" in out.stdout


def test_the_shipped_catalog_serves_no_retired_model() -> None:
    """Fails on the day a shipped model retires: update registry.toml (drop it, or its
    tests' references) before that day."""
    cli = [sys.executable, "-m", "apimodels.cli", "--registry", str(ROOT / "registry.toml")]
    out = subprocess.run([*cli, "models", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
