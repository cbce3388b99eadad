"""Schemathesis fuzzes every operation of the OpenAPI document, in-process against the ASGI app (SQLite, local
storage, no broker), with a valid key: the boundary values of every parameter (its coverage phase) on SQLite and
on PostgreSQL, then random data that fits the document and data that does not on PostgreSQL. Whatever it sends,
the answer is never a 5xx.

Bounded to keep the suite's time: the coverage phase's ~1000 cases, then 15 random examples per operation and mode. The tenant-wide event stream never
ends, so it is left out here; tests/api/test_fuzz_regressions.py checks its parameters."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from secateurs.db.settings import Settings

from tests.conftest import npz_bytes, tiny_cnn_onnx

EXAMPLES = 15  # per operation and mode
ENDLESS = {"tenant_events"}


def _key(settings: Settings, tenant: str) -> str:
    from secateurs.api.cli import create_key
    from secateurs.db.settings import get_settings

    env = {"SECATEURS_HOME": str(settings.home), "SECATEURS_DATABASE_URL": settings.db_url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        return create_key(tenant)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The app on either database (PostgreSQL is the stricter: no NUL in text, integers by their column)."""
    from secateurs.api.app import create_app

    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    s = Settings(home=tmp_path_factory.mktemp("fuzz"), database_url=url, max_upload_bytes=1 << 20,
                 max_uploads_per_minute_per_tenant=100_000, max_active_jobs_per_tenant=100_000)
    app = create_app(s, enqueue=lambda _: None, ping_broker=lambda: None, queue_depth=lambda: 0)
    auth = {"Authorization": f"Bearer {_key(s, f'fuzz-{uuid.uuid4().hex[:8]}')}"}
    # ids that exist, so that the fuzzer gets past the 404s to what is behind them
    with TestClient(app) as c:
        model = c.post("/v1/models", headers=auth, files={"file": ("m.onnx", tiny_cnn_onnx())}).json()["id"]
        data = c.post("/v1/datasets", headers=auth, files={"file": ("d.npz", npz_bytes(x=np.zeros((2, 3, 16, 16),
                                                                                              np.float32)))}).json()["id"]
        # the job uses both and stays queued, so DELETE on them answers 409 and they outlive the fuzzing
        job = c.post("/v1/jobs", headers=auth, json={"model_id": model, "spec": {"calibration": {"dataset_id": data}}}
                     ).json()["id"]
    return app, auth, {"model_id": model, "dataset_id": data, "job_id": job, "name": "model.onnx"}


def _operations(app):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(ops) == len(list(schema.get_all_operations())), "an operation's schema did not load"
    return [op for op in ops if op.definition.raw.get("operationId") not in ENDLESS]


def test_boundary_values_get_no_server_error(fuzzed):  # type: ignore[no-untyped-def]
    """Schemathesis's coverage phase: for every parameter and body field, the values at and past each bound the
    document states, missing and wrong-typed ones; each case once as generated and once on objects that exist."""
    app, auth, known = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, count, t0 = {}, 0, time.monotonic()
    for op in _operations(app):
        cases = schema.iter_coverage_cases(op, generation_modes=list(GenerationMode),
                                           generation_config=schema.config.generation_for(operation=op, phase="coverage"))
        for case in cases:
            for on_known in (False, True):
                if on_known:
                    if not case.path_parameters or not set(case.path_parameters) <= set(known):
                        continue
                    case.path_parameters = {name: known[name] for name in case.path_parameters}
                count += 1
                try:
                    case.call_and_validate(headers=auth, checks=[not_a_server_error])
                except Exception as e:
                    failures.setdefault(op.label, str(e)[:3000])
    print(f"{count} coverage cases in {time.monotonic() - t0:.1f} s", end=" ")
    assert count > 500 and not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


# random data on the stricter database only, for the suite's time (the coverage phase runs on both)
@pytest.mark.parametrize("fuzzed", ["postgresql"], indirect=True)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_input_gets_a_server_error(fuzzed, mode):  # type: ignore[no-untyped-def]
    app, auth, known = fuzzed
    failures, t0, ops = {}, time.monotonic(), _operations(app)
    assert len(ops) >= 15, [op.label for op in ops]
    for op in ops:
        names = {p.name for p in op.path_parameters}
        strategy = op.as_strategy(mode)
        if names and names <= set(known):  # half the time on objects that exist
            strategy = st.one_of(strategy, op.as_strategy(mode, path_parameters={n: known[n] for n in names}))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=auth, checks=[not_a_server_error])

        try:
            fuzz()
        except Unsatisfiable:  # nothing of this operation can break its document (every string is a valid id)
            continue
        except Exception as e:  # every operation is fuzzed; all failures are reported together
            failures[op.label] = str(e)[:3000]
    print(f"{len(ops)} operations x {EXAMPLES} {mode.value} examples in {time.monotonic() - t0:.1f} s", end=" ")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
