"""Settings: one loader, environment over local.settings.json, errors that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import SettingsError
from shared.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "local.settings.example.json"


def test_environment_wins_over_local_settings(tmp_path: Path) -> None:
    local = tmp_path / "local.settings.json"
    local.write_text(
        json.dumps({"Values": {"MONGODB_DATABASE": "fromfile", "MAX_BODY_BYTES": "4096"}})
    )
    settings = load_settings({"MONGODB_DATABASE": "fromenv"}, local)
    assert settings.mongodb_database == "fromenv" and settings.max_body_bytes == 4096


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MONGODB_URI": "http://nope"}, "MONGODB_URI"),
        ({"POSTGRES_DSN": "host=x"}, "POSTGRES_DSN"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"DEPENDENCY_TIMEOUT_MS": "soon"}, "DEPENDENCY_TIMEOUT_MS"),
        ({"MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES"),
    ],
)
def test_a_wrong_setting_is_named(tmp_path: Path, environ, named) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(environ, tmp_path / "absent.json")


def test_a_missing_server_url_says_how_to_provide_it(tmp_path: Path) -> None:
    settings = load_settings({}, tmp_path / "absent.json")
    with pytest.raises(SettingsError, match=r"MONGODB_URI is not set.*salespredict serve"):
        settings.require("mongodb_uri")


def test_a_broken_local_settings_file_is_reported(tmp_path: Path) -> None:
    local = tmp_path / "local.settings.json"
    local.write_text("{not json")
    with pytest.raises(SettingsError, match=r"local\.settings\.json"):
        load_settings({}, local)


def test_the_example_lists_every_setting_the_code_reads() -> None:
    values = json.loads(EXAMPLE.read_text())["Values"]
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert aliases <= set(values), aliases - set(values)
    assert load_settings({}, EXAMPLE).mongodb_database == "salespredict"


def test_keys_are_masked_in_repr() -> None:
    settings = Settings(SALESPREDICT_FUNCTION_KEY="s3cret", SALESPREDICT_ADMIN_KEY="t0p")
    assert "s3cret" not in repr(settings) and "t0p" not in repr(settings)
