"""Real stacks for the service tests: the embedded one (`secateurs up`), PostgreSQL + Redis with separate
API and worker processes, and S3 storage on a loopback endpoint (s3rver, which checks signatures as S3 does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    key: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=60)

    def new_key(self, tenant: str) -> str:
        return create_key(self.env, tenant)


def secateurs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "secateurs.cli", *args]


def create_key(env: dict[str, str], tenant: str) -> str:
    out = subprocess.run(secateurs_cmd("keys", "create", "--tenant", tenant), env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a stack process exited with {p.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become ready")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def redis_db() -> Iterator[int]:
    """A Redis database number of our own for this test run: test runs side by side on one machine (a
    fresh-clone CI beside a working copy) must not consume each other's queue or flush it."""
    import redis

    for index in range(1, 16):
        r = redis.Redis(host="127.0.0.1", port=6379, db=index)
        # an empty database, marked as ours: one in use by anything else is never touched
        if r.dbsize() == 0 and r.set("secateurs-test:owner", f"{os.getpid()}-{uuid.uuid4().hex}", nx=True, ex=3600):
            try:
                yield index
            finally:
                r.flushdb()
            return
    raise RuntimeError("every Redis database 1-15 is taken by another test run")


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
    env.update({"SECATEURS_HOME": str(home), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def start_embedded(home: Path, **extra: str) -> Stack:
    port = free_port()
    env = base_env(home, **extra)
    log = open(home / "up.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(secateurs_cmd("up", "--port", str(port)), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [proc])
        key = create_key(env, "tenant-a")
    except Exception:
        stop([proc])
        raise
    return Stack(url, key, env, [proc])


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_embedded(tmp_path_factory.mktemp("embedded"))
    yield stack
    stop(stack.procs)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"secateurs_test_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def production(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Stack]:
    """`secateurs api` and `secateurs worker` as separate processes on PostgreSQL and Redis."""
    home = tmp_path_factory.mktemp("production")
    with redis_db() as db_index:
        yield from _production(home, postgres_url, db_index)


def _production(home: Path, postgres_url: str, db_index: int) -> Iterator[Stack]:
    # webhooks to loopback allowed here, so a test's local receiver can take the worker's deliveries
    env = base_env(home, SECATEURS_DATABASE_URL=postgres_url,
                   SECATEURS_BROKER_URL=f"redis://127.0.0.1:6379/{db_index}", SECATEURS_WEBHOOK_ALLOW_PRIVATE="true")
    port = free_port()
    logs = open(home / "stack.log", "w")  # noqa: SIM115
    api = subprocess.Popen(secateurs_cmd("api", "--port", str(port)), env=env, stdout=logs, stderr=subprocess.STDOUT)
    worker = subprocess.Popen(secateurs_cmd("worker"), env=env, stdout=logs, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [api, worker])
        key = create_key(env, "tenant-a")
    except Exception:
        stop([api, worker])
        raise
    try:
        yield Stack(url, key, env, [api, worker])
    finally:
        stop([api, worker])


REPO = Path(__file__).resolve().parents[2]
S3RVER = REPO / ".venv" / "s3rver"
# s3rver's package ships no runnable bin: started through its module, it says "ready <port>" once it listens
S3RVER_JS = ("const S3rver = require(process.argv[1]); new S3rver({directory: process.argv[2], address: '127.0.0.1', "
             "port: +process.argv[3], silent: true, configureBuckets: [{name: process.argv[4], configs: []}]}).run()"
             ".then(a => console.log('ready ' + a.port), e => { console.error(e); process.exit(1) })")
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3rver(data: Path, bucket: str) -> Iterator[str]:
    """s3rver (scripts/s3rver.sh installs it on first use) on a free loopback port with `bucket`; yields its endpoint.
    Unlike moto it checks every request's SigV4 signature, and a presigned URL's signature and expiry, as S3 does;
    its one account's keys are S3RVER / S3RVER (S3_CREDENTIALS)."""
    module = S3RVER / "node_modules" / "@20minutes" / "s3rver"
    if not (module / "lib" / "s3rver.js").exists():
        subprocess.run(["bash", str(REPO / "scripts" / "s3rver.sh"), str(S3RVER)], check=True, timeout=900)
    port = free_port()
    server = subprocess.Popen(["node", "-e", S3RVER_JS, str(module), str(data), str(port), bucket],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # empty if it exited
        assert line.startswith("ready"), f"s3rver did not start (exit {server.poll()}): {line!r}"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([server])


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """The embedded stack with its storage on S3: s3rver on a loopback port (bucket secateurs-test)."""
    with s3rver(tmp_path_factory.mktemp("s3rver"), "secateurs-test") as endpoint:
        os.environ.update(S3_CREDENTIALS)  # for the tests' own boto3 clients
        stack = start_embedded(tmp_path_factory.mktemp("s3"), SECATEURS_STORAGE_URL="s3://secateurs-test/artifacts",
                               SECATEURS_S3_ENDPOINT_URL=endpoint, **S3_CREDENTIALS)
        try:
            yield stack, endpoint
        finally:
            stop(stack.procs)
