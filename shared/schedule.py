"""NCRONTAB schedules (six fields, seconds first), as Azure Functions timers read them."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

from shared.errors import SettingsError


def check(expression: str) -> str:
    """``expression`` if it is a six-field NCRONTAB expression, else a clear error."""
    if len(expression.split()) != 6 or not croniter.is_valid(expression, second_at_beginning=True):
        raise SettingsError(
            f"Timer schedule {expression!r} is not a six-field NCRONTAB expression "
            "(second minute hour day month day-of-week)"
        )
    return expression


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time ``expression`` fires after ``after``."""
    return croniter(expression, after, second_at_beginning=True).get_next(datetime)  # type: ignore[no-any-return]
