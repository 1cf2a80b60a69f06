"""Every setting the app reads, typed, in one place.

Settings come from the environment (Azure App Settings in the cloud). When the app runs locally,
the ``Values`` of ``local.settings.json`` fill in what the environment does not set, exactly as
Azure Functions Core Tools does. Every name here is listed once in ``local.settings.example.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import schedule
from shared.errors import SettingsError

LOCAL_SETTINGS_FILE = "local.settings.json"

Millis = Annotated[int, Field(ge=1, le=120_000)]


class Settings(BaseModel):
    """The app's configuration; field aliases are the setting names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    mongodb_uri: str = Field("", alias="MONGODB_URI", repr=False)  # may hold a password
    mongodb_database: str = Field("salespredict", alias="MONGODB_DATABASE", min_length=1)
    postgres_dsn: str = Field("", alias="POSTGRES_DSN", repr=False)  # may hold a password
    redis_url: str = Field("", alias="REDIS_URL", repr=False)  # may hold a password
    data_dir: Path = Field(Path(".salespredict"), alias="SALESPREDICT_DATA_DIR")
    function_key: str = Field("", alias="SALESPREDICT_FUNCTION_KEY", repr=False)
    admin_key: str = Field("", alias="SALESPREDICT_ADMIN_KEY", repr=False)
    dependency_timeout_ms: Millis = Field(2000, alias="DEPENDENCY_TIMEOUT_MS")
    max_body_bytes: int = Field(256 * 1024, alias="MAX_BODY_BYTES", ge=1024)
    max_batch_body_bytes: int = Field(4 * 1024 * 1024, alias="MAX_BATCH_BODY_BYTES", ge=1024)
    idempotency_key_ttl_hours: int = Field(24, alias="IDEMPOTENCY_KEY_TTL_HOURS", ge=1)
    idempotency_purge_schedule: str = Field("0 0 * * * *", alias="IDEMPOTENCY_PURGE_SCHEDULE")
    demo_opportunities: int = Field(2000, alias="DEMO_OPPORTUNITIES", ge=0)
    etl_schedule: str = Field("0 */5 * * * *", alias="ETL_SCHEDULE")
    etl_batch_size: int = Field(1000, alias="ETL_BATCH_SIZE", ge=1, le=100_000)
    etl_lag_seconds: int = Field(30, alias="ETL_LAG_SECONDS", ge=1, le=86_400)
    etl_read_timeout_ms: int = Field(300_000, alias="ETL_READ_TIMEOUT_MS", ge=1000)
    train_schedule: str = Field("0 0 2 * * 0", alias="TRAIN_SCHEDULE")
    train_min_new_closed: int = Field(200, alias="TRAIN_MIN_NEW_CLOSED", ge=1)
    prediction_cache_ttl_seconds: int = Field(
        86_400, alias="PREDICTION_CACHE_TTL_SECONDS", ge=1, le=30 * 86_400
    )
    cache_timeout_ms: Millis = Field(100, alias="CACHE_TIMEOUT_MS")

    @field_validator("train_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        try:
            return schedule.check(value)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("mongodb_uri")
    @classmethod
    def _mongodb_scheme(cls, value: str) -> str:
        if value and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("postgres_dsn")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a URL starting with postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    def require(self, name: str) -> str:
        """The value of a server URL setting, or a clear error saying how to provide it."""
        field = type(self).model_fields[name]
        value = getattr(self, name)
        if not value:
            raise SettingsError(
                f"{field.alias} is not set. Set it in the environment or in the Values of "
                f"{LOCAL_SETTINGS_FILE}, or run through `salespredict serve`, which starts an "
                "embedded server for every URL left empty."
            )
        return str(value)


def read_local_settings(path: Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json file (empty when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (json.JSONDecodeError, AttributeError) as exc:
        raise SettingsError(f"{path} is not a JSON object with a Values map: {exc}") from exc
    return {str(k): str(v) for k, v in values.items()}


def load_settings(
    environ: Mapping[str, str] | None = None, local_settings: Path | None = None
) -> Settings:
    """Read settings from ``environ`` (default: the process environment) over local settings."""
    env = dict(os.environ if environ is None else environ)
    local_path = local_settings or Path(LOCAL_SETTINGS_FILE)
    values = {**read_local_settings(local_path), **env}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"Invalid setting(s): {problems}") from exc


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read once."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(settings: Settings) -> None:
    """Replace the process's settings (tests, the local host) and drop clients built on the old."""
    global _current
    _current = settings
    from shared import stores

    stores.reset()
