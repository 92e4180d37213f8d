"""A throw-away PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` on a temporary folder.

The server listens on loopback only (a free port) and on a unix socket in its own
folder, accepts password logins (SCRAM) for ``postgres`` with a random password,
runs without fsync, and is stopped and removed at the end of the session.
``initdb`` refuses to run as root: as root, the server runs as the ``postgres``
user (``runuser``), in a folder it owns.

When that is impossible here, :func:`start` says exactly why, and the tests
skip with that reason; with ``POISONGUARD_REQUIRE_POSTGRES=1`` (``.ci/run`` sets
it once it has PostgreSQL) they fail instead, so that CI cannot pass by skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's postgresql puts the server's programs (not on PATH).
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
REQUIRE_ENV = "POISONGUARD_REQUIRE_POSTGRES"


class Unavailable(Exception):
    """Why no server can be started here."""


def _binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres (PATH first, then Debian's newest)."""
    on_path = shutil.which("initdb")
    folders = [str(Path(on_path).resolve().parent)] if on_path else []
    folders += sorted(
        glob.glob(DEBIAN_BINARIES), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for folder in folders:
        if all((Path(folder) / p).is_file() for p in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise Unavailable(
        "no PostgreSQL server programs (initdb, pg_ctl, postgres) on PATH or in "
        f"{DEBIAN_BINARIES}: install Debian's postgresql package (.ci/run does)"
    )


def _as_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs the server's programs, and the user they run as when
    that is not this one."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable(
            "running as root, where initdb refuses to run, and there is no 'postgres' user "
            "to run the server as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable(
            "running as root, where initdb refuses to run, and there is no runuser to run "
            "the server as the 'postgres' user"
        )
    return [runuser, "-u", "postgres", "--"], user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running throw-away server."""

    folder: Path
    bin: Path
    prefix: list[str]
    port: int
    password: str

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A URL of the server as ``postgres`` (with its password, or ``password``)."""
        secret = self.password if password is None else password
        return f"postgresql://postgres:{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (log.read_text(errors="replace") if log and log.exists() else done.stderr)[-800:]
        raise Unavailable(f"{what} failed (exit {done.returncode}): {tail.strip()}")


def start() -> Server:
    """Start a server in a new temporary folder.

    Raises
    ------
    Unavailable
        With the reason, when there are no server programs, no user to run them as,
        or they fail here.
    """
    binaries = _binaries()
    prefix, user = _as_user()
    folder = Path(
        tempfile.mkdtemp(prefix="poisonguard-pg-", dir="/tmp" if Path("/tmp").is_dir() else None)
    )
    try:
        password = secrets.token_hex(12)
        pwfile = folder / "pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            for path in (folder, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        data, log, port = folder / "data", folder / "server.log", _free_port()
        _run(
            [
                *prefix,
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        _run(
            [
                *prefix,
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            "pg_ctl start",
            log,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Server(folder, binaries, prefix, port, password)
