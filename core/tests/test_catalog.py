"""registry.toml validation: every mistake stops startup naming the file, entry and reason."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from apimodels.catalog import load_catalog, parse_catalog
from apimodels.errors import ConfigError

REPO_REGISTRY = Path(__file__).parents[2] / "registry.toml"

GOOD = """
[providers.openai]
package = "apimodels-openai"

[models."openai/gpt-4o-mini"]
provider = "openai"
upstream = "gpt-4o-mini"
modality = "chat"
pricing = { input_per_1m = "0.15", output_per_1m = "0.60" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_registry_is_valid() -> None:
    catalog = load_catalog(REPO_REGISTRY)
    assert "openai/gpt-4o-mini" in catalog.served_models()
    mini = catalog.models["openai/gpt-4o-mini"]
    assert mini.pricing.input_per_1m == Decimal("0.15")
    assert mini.id == "openai/gpt-4o-mini"


def test_good_minimal_catalog(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    assert list(catalog.served_models()) == ["openai/gpt-4o-mini"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('"0.15"', "0.15"),
            'models."openai/gpt-4o-mini".pricing.input_per_1m: write prices as decimal strings',
        ),
        (('"0.15"', '"cheap"'), "not a decimal number: 'cheap'"),
        (('"0.15"', '"-1"'), "a price must be a finite number >= 0"),
        (('modality = "chat"', 'modality = "telepathy"'), 'models."openai/gpt-4o-mini".modality'),
        ((', output_per_1m = "0.60"', ""), "a chat model needs pricing.output_per_1m"),
        (
            ('provider = "openai"', 'provider = "nobody"'),
            "names provider 'nobody', which has no [providers] entry",
        ),
        (
            ('upstream = "gpt-4o-mini"', 'upstreem = "gpt-4o-mini"'),
            "upstreem: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_catalog_names_file_entry_and_reason(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_catalog(write(tmp_path, "[providers.openai\n"))
    with pytest.raises(ConfigError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.toml")


def test_models_of_a_disabled_provider_are_not_served() -> None:
    data = {
        "providers": {"a": {"package": "pkg-a"}, "b": {"package": "pkg-b", "enabled": False}},
        "models": {
            "a/m": {
                "provider": "a",
                "upstream": "m",
                "modality": "embedding",
                "pricing": {"input_per_1m": "1"},
            },
            "b/m": {
                "provider": "b",
                "upstream": "m",
                "modality": "embedding",
                "pricing": {"input_per_1m": "1"},
            },
        },
    }
    catalog = parse_catalog(data)
    assert list(catalog.served_models()) == ["a/m"]


def test_image_price_table_and_pricing_as_dict() -> None:
    data = {
        "providers": {"a": {"package": "pkg-a"}},
        "models": {
            "a/img": {
                "provider": "a",
                "upstream": "img",
                "modality": "image",
                "pricing": {"per_image": {"hd/1024x1024": "0.08"}, "markup": "0.1"},
            }
        },
    }
    pricing = parse_catalog(data).models["a/img"].pricing
    assert pricing.as_dict() == {"per_image": {"hd/1024x1024": "0.08"}, "markup": "0.1"}


def test_an_alias_must_name_a_listed_model_and_not_shadow_one(tmp_path: Path) -> None:
    base = (Path(__file__).resolve().parents[2] / "registry.toml").read_text()
    for extra, message in [
        ('"bad" = "openai/gpt-9"\n', "names 'openai/gpt-9'"),
        ('"openai/gpt-4o" = "openai/gpt-4o-mini"\n', "already a model's id"),
    ]:
        path = tmp_path / "registry.toml"
        path.write_text(base.replace("[aliases]\n", "[aliases]\n" + extra, 1))
        with pytest.raises(ConfigError, match=message):
            load_catalog(path)
