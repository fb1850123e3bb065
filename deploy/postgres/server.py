"""Start and stop a throwaway PostgreSQL cluster from the OS packages on a loopback port.

PostgreSQL refuses to run as root, so when we are root the cluster is owned by, and every server
command runs as, an unprivileged account (``postgres`` from the OS package, created if missing).
Clients connect over TCP on 127.0.0.1 with a password; the URL is printed by ``start``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "var" / "postgres"
DEFAULT_PORT = 55432
DB_USER = "badgestream"
DB_NAME = "badgestream"
SERVICE_ACCOUNT = "postgres"


def _say(message: str) -> None:
    print(f"[postgres] {message}", file=sys.stderr, flush=True)


def pg_bin_dir() -> Path:
    """The directory of initdb/pg_ctl: PATH first, then Debian's versioned layout."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise ConfigurationError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: install the OS package "
        "(`apt-get install postgresql`, done by `make deps`) or set BADGESTREAM_DATABASE_URL"
    )


def _as_service_account() -> list[str]:
    """Prefix that runs a command as the unprivileged account when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT],
            check=True,
        )
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SERVICE_ACCOUNT, "--"]
    return ["su", SERVICE_ACCOUNT, "-s", "/bin/sh", "-c"]  # pragma: no cover - runuser is in util-linux


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    prefix = _as_service_account()
    cmd = [*prefix, " ".join(cmd)] if prefix and prefix[0] == "su" else [*prefix, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


@dataclass
class LocalPostgres:
    data_dir: Path = DEFAULT_DATA_DIR
    port: int = DEFAULT_PORT
    password: str = "badgestream-local"

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = DB_NAME) -> str:
        return f"postgresql+psycopg://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _chown(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            # Parents must be traversable by the service account (e.g. a private /root checkout).
            parent = self.data_dir.resolve().parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent

    def is_running(self) -> bool:
        if not (self.cluster_dir / "PG_VERSION").exists():
            return False
        result = _run([str(pg_bin_dir() / "pg_ctl"), "status", "-D", str(self.cluster_dir)])
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> float:
        began = time.monotonic()
        bindir = pg_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown()
        if self.is_running():
            _say(f"already running: {self.url().replace(self.password, '***')}")
            return time.monotonic() - began
        if not (self.cluster_dir / "PG_VERSION").exists():
            pwfile = self.data_dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            self._chown()
            result = _run([str(bindir / "initdb"), "-D", str(self.cluster_dir), "-U", "postgres",
                           "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                           "--encoding=UTF8", "--locale=C"])
            pwfile.unlink(missing_ok=True)
            if result.returncode != 0:
                raise ConfigurationError(f"initdb failed:\n{result.stdout}{result.stderr}")
            with (self.cluster_dir / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# throwaway local cluster written by deploy/postgres/server.py\n"
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.data_dir}'\n"
                    "max_connections = 100\nshared_buffers = 128MB\nfsync = on\n"
                    "synchronous_commit = on\n"
                )
        self._chown()
        result = _run([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                       "-D", str(self.cluster_dir), "-l", str(self.log_file)])
        if result.returncode != 0:
            tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise ConfigurationError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{tail}")
        self._ensure_role_and_database()
        elapsed = time.monotonic() - began
        _say(f"ready on 127.0.0.1:{self.port} after {elapsed:.1f}s")
        return elapsed

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = pg_bin_dir() / "psql"
        result = _run([str(psql), "-h", str(self.data_dir), "-p", str(self.port), "-U", "postgres",
                       "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        if result.returncode != 0:
            raise ConfigurationError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _ensure_role_and_database(self) -> None:
        if not self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'").strip():
            self.psql(f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{self.password}'")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'").strip():
            self.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")

    def stop(self) -> None:
        if not self.is_running():
            return
        result = _run([str(pg_bin_dir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.cluster_dir)])
        if result.returncode != 0:
            raise ConfigurationError(f"pg_ctl stop failed: {result.stderr.strip()}")
        _say("stopped")


@contextlib.contextmanager
def throwaway_postgres(prefix: str = "badgestream-pg-") -> Iterator[str]:
    """A local cluster in a temporary directory on a free port for the block; stopped and removed after."""
    from deploy.kafka.broker import free_port

    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalPostgres(data_dir=data_dir, port=free_port())
    try:
        server.start()
        yield server.url()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def cli(args: argparse.Namespace) -> int:
    """``badgestream postgres start|stop|status``."""
    server = LocalPostgres(
        data_dir=Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR,
        port=args.port or DEFAULT_PORT,
    )
    if args.action == "start":
        server.start()
        print(server.url())
    elif args.action == "stop":
        server.stop()
    else:
        running = server.is_running()
        print("running" if running else "stopped")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m deploy.postgres.server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    try:
        sys.exit(cli(parser.parse_args()))
    except ConfigurationError as exc:
        print(f"badgestream postgres: error: {exc}", file=sys.stderr)
        sys.exit(2)
