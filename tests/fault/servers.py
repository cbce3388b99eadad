"""Servers the fault tests start, kill and restart themselves, on free loopback ports and in temporary
directories: never the machine's own Redis (6379) or PostgreSQL (5432)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.api.conftest import REPO, S3RVER, S3RVER_JS, base_env, create_key, free_port, secateurs_cmd, stop


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class RedisServer:
    """redis-server without persistence: a kill -9 and a restart come back empty, as a lost broker does."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pong, 10, f"redis-server on port {self.port}")

    def _pong(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port, socket_timeout=2)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class S3Server:
    """s3rver (an S3 server that checks signatures as S3 does; scripts/s3rver.sh installs it) on a free loopback port,
    keeping its objects in `data`: stop() and start() again come back on the same port with the same objects, as an
    S3 endpoint that went away for a while does."""

    def __init__(self, data: Path, bucket: str) -> None:
        self.port, self.data, self.bucket = free_port(), data, bucket
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.module = S3RVER / "node_modules" / "@20minutes" / "s3rver"
        if not (self.module / "lib" / "s3rver.js").exists():
            subprocess.run(["bash", str(REPO / "scripts" / "s3rver.sh"), str(S3RVER)], check=True, timeout=900)

    def start(self) -> None:
        self.proc = subprocess.Popen(["node", "-e", S3RVER_JS, str(self.module), str(self.data), str(self.port),
                                      self.bucket], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # empty if it exited
        assert line.startswith("ready"), f"s3rver did not start (exit {self.proc.poll()}): {line!r}"

    def stop(self) -> None:
        """SIGKILL: the endpoint refuses connections at once, as one whose server died does."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise FileNotFoundError(f"{name} not found under /usr/lib/postgresql/*/bin or on PATH")
    return path


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb into a temporary directory, pg_ctl on a free port), removed by
    close(). The directory is its own, outside pytest's (root-only) tree: as root, the server runs as `postgres`."""

    def __init__(self) -> None:
        import tempfile

        self.port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="secateurs-pg-"))
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        owner = _as_postgres()
        if owner:
            os.chown(workdir, owner["user"], owner["group"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, **_as_postgres())
        # the socket directory too, so that nothing lands in /var/run/postgresql
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{workdir}'\n"
                    "fsync = off\n")  # commits still reach the WAL before they return: a kill loses nothing

    def _ctl(self, *args: str) -> None:
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", *args],
                       check=True, capture_output=True, **_as_postgres())

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast` (an operator's restart: clients told, checkpoint) or `-m immediate` (as a crash:
        no goodbye, WAL recovery on start); returns once the server accepts connections again."""
        self._ctl("restart", "-m", mode)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _as_postgres() -> dict:
    """initdb and postgres refuse to run as root: run them as the `postgres` user when we are root."""
    import pwd

    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def start_api(home: Path, port: int | None = None, **env: str) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """`secateurs api` alone (no worker) on the given SECATEURS_* settings; returns it, its URL, its env."""
    port = port or free_port()
    full = base_env(home, **env)
    log = open(home / "api.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(secateurs_cmd("api", "--port", str(port)), env=full, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}; see {home / 'api.log'}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 90, "the API to answer /healthz")
    except BaseException:
        stop([proc])
        raise
    return proc, url, full


def start_worker(home: Path, env: dict[str, str], pool: str = "solo") -> subprocess.Popen:
    log = open(home / "worker.log", "a")  # noqa: SIM115
    return subprocess.Popen(secateurs_cmd("worker", "--pool", pool), env=env, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def prefork_worker_and_api(home: Path, **settings: str) -> Iterator[tuple[subprocess.Popen, httpx.Client]]:
    """`secateurs worker` with Celery's prefork pool, as in production (it boots while the API starts), and
    `secateurs api`, on the embedded broker and SQLite under `home` with the given SECATEURS_* settings; a client
    with a new tenant's key. Both stopped afterwards."""
    procs = []
    try:
        worker = start_worker(home, base_env(home, **settings), pool="prefork")
        procs.append(worker)
        api, url, env = start_api(home, **settings)
        procs.append(api)
        key = create_key(env, "tenant-a")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            yield worker, c
    finally:
        stop(procs)


def upload_resnet20(c: httpx.Client) -> str:
    """The shared CIFAR ResNet-20 weights as a model of the client's tenant; returns its id."""
    from tests.conftest import shared

    w = shared("resnet20_cifar10.safetensors")
    model = c.post("/v1/models", files={"file": (w.name, w.read_bytes())}, data={"arch": "resnet20_cifar"})
    assert model.status_code == 201, model.text
    return str(model.json()["id"])
