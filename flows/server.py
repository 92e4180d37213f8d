"""A loopback Prefect server for ``poisonguard run`` and ``poisonguard serve``.

With no ``PREFECT_API_URL`` set, both start ``prefect server start`` on
127.0.0.1, with its database under the store, for as long as they last:
``serve`` because Prefect's temporary (ephemeral) API does not schedule
("Cannot schedule flows on an ephemeral server"), ``run`` because a temporary
API outlives a run that is killed (it is a plain child process). The server
started here is tied to the process that started it: on Linux the kernel sends
it SIGTERM when that process dies, however it dies (``PR_SET_PDEATHSIG``).
This module does not import Prefect: it must run before Prefect reads its settings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from poisonguard.store import make_private_dirs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_process() -> None:
    """In the server's process, before it runs: what it creates (its database, under the
    store) is owner-only, and it gets SIGTERM when the process that started it dies."""
    os.umask(0o077)
    _die_with_parent()


def _die_with_parent() -> None:
    """SIGTERM when the process that started this one dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.contextmanager
def local_server(home: Path, timeout: float = 120.0, *, services: bool = True) -> Iterator[str]:
    """Run a loopback Prefect server with its home in ``home``; yield its API URL.

    Sets ``PREFECT_API_URL`` for this process while it lasts. ``services=False``
    leaves out the scheduler and other background services (a one-off run
    needs none of them).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    make_private_dirs(home)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    # Owner-only from its creation; lives as long as the server.
    log = os.fdopen(
        os.open(home / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
            *([] if services else ["--no-services"]),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_server_process,  # the CLI runs no other thread yet
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the Prefect server stopped at start; see {home / 'server.log'}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer in {timeout:.0f} s")
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
