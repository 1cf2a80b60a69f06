"""The servers a benchmark runs against: those given by URL, else embedded ones."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from shared.devhost.servers import EmbeddedServers, missing_servers, with_urls
from shared.settings import Settings, load_settings


def bench_settings(stack: ExitStack, needed: set[str]) -> Settings:
    """Settings from the environment; each ``needed`` server without a URL is started embedded
    in a temporary folder, for as long as ``stack`` lasts."""
    settings = load_settings(local_settings=Path("/nonexistent"))
    missing = [name for name in missing_servers(settings) if name in needed]
    if missing:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = stack.enter_context(EmbeddedServers(data, missing))
        settings = with_urls(settings, servers.urls)
    return settings
