"""The ``[storage]`` table and the storage secret: mistakes stop startup with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from apimodels.catalog import parse_catalog
from apimodels.cli import cli
from apimodels.errors import ConfigError
from apimodels.storage import LocalStorage, load_secret, open_storage
from apimodels.store.db import open_db


def storage(**table: object):  # type: ignore[no-untyped-def]
    return parse_catalog({"storage": table}).storage


def test_defaults_keep_outputs_in_a_local_folder() -> None:
    config = storage()
    assert (config.backend, config.path, config.url_ttl_seconds) == ("local", "outputs", 3600)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"backend": "ftp"}, "storage.backend: Input should be 'local' or 's3'"),
        (
            {"url_ttl_seconds": 0},
            "storage.url_ttl_seconds: Input should be greater than or equal to 1",
        ),
        (
            {"url_ttl_seconds": 604801},
            "storage.url_ttl_seconds: Input should be less than or equal to 604800",
        ),
        (
            {"max_object_bytes": 0},
            "storage.max_object_bytes: Input should be greater than or equal to 1",
        ),
        (
            {"backend": "s3", "bucket": "outputs"},
            'storage: backend "s3" needs storage.endpoint_url',
        ),
        (
            {"backend": "s3", "endpoint_url": "https://a.r2.cloudflarestorage.com"},
            'storage: backend "s3" needs storage.bucket',
        ),
        ({"bucket": "Not_A_Bucket"}, "storage.bucket: String should match pattern"),
        (
            {"addressing_style": "dns"},
            "storage.addressing_style: Input should be 'path' or 'virtual'",
        ),
        (
            {"secret_access_key": "oops"},
            "storage.secret_access_key: Extra inputs are not permitted",
        ),
    ],
)
def test_mistakes_name_the_field(table: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        storage(**table)
    assert expected in str(info.value)


def test_the_generated_secret_is_kept_in_the_database(tmp_path: Path) -> None:
    config = storage()
    first = load_secret(open_db(tmp_path / "a.db"), config)
    again = load_secret(open_db(tmp_path / "a.db"), config)  # another process, or a restart
    other = load_secret(open_db(tmp_path / "b.db"), config)
    assert first == again != other and len(first) >= 32
    keys = [
        LocalStorage(tmp_path / "out", s).object_key("acct", "t", 0, "png")
        for s in (first, again, other)
    ]
    assert keys[0] == keys[1] != keys[2]


def test_a_secret_from_the_environment(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    config = storage(secret_env="OUTPUTS_SECRET")
    assert load_secret(db, config, {"OUTPUTS_SECRET": "k" * 40}) == b"k" * 40
    with pytest.raises(ConfigError, match="the variable OUTPUTS_SECRET is not set"):
        load_secret(db, config, {})
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_secret(db, config, {"OUTPUTS_SECRET": "short"})
    assert db.execute("SELECT count(*) FROM server_secrets").fetchone()[0] == 0


def test_an_unusable_folder_stops_startup(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"storage\.path: cannot create the folder"):
        open_storage(storage(path="file/outputs"), b"s" * 32, base_dir=tmp_path)


def test_storage_check_command_on_the_local_folder(tmp_path: Path) -> None:
    (tmp_path / "registry.toml").write_text('[storage]\npath = "media"\n')
    args = ["--registry", str(tmp_path / "registry.toml"), "--db", str(tmp_path / "a.db")]
    result = CliRunner().invoke(cli, [*args, "storage", "check"])
    assert result.exit_code == 0, result.output
    assert "ok: stored, read back and deleted a 1024-byte object in the folder" in result.output
    assert [p for p in (tmp_path / "media").rglob("*") if p.is_file()] == []
