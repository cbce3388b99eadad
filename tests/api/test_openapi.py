"""The OpenAPI document: stable operation ids for generated clients, and every request body described with
examples that the API's own request models accept."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from secateurs.api.app import create_app
from secateurs.api.schemas import JobCreate
from secateurs.db.settings import Settings

# what generated clients already call: renaming one of these breaks them
PINNED = {"upload_model", "list_models", "get_model", "upload_dataset", "list_datasets", "get_dataset",
          "create_job", "list_jobs", "get_job", "cancel_job", "job_events", "get_artifact", "tenant_events",
          "webhook_secret", "list_signals", "healthz", "readyz"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(home=tmp_path_factory.mktemp("openapi")), enqueue=lambda job_id: None,
                      ping_broker=lambda: None, queue_depth=lambda: 0)


@pytest.fixture(scope="module")
def doc(app):
    return TestClient(app).get("/openapi.json").json()


def operations(doc):
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_operation_ids_are_the_route_names_unique_and_pinned(doc):
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), ids
    for method, path, op in operations(doc):
        # the function's name, not FastAPI's default `name_path_method` id, which changes with the path
        assert op["operationId"].isidentifier() and not op["operationId"].endswith(f"_{method}"), (path, op)
    assert PINNED <= set(ids), PINNED - set(ids)


def test_every_request_body_is_described_with_examples(doc):
    bodies = {op["operationId"]: op["requestBody"] for method, _, op in operations(doc)
              if method in ("post", "put", "patch") and op["operationId"] != "cancel_job"}  # cancel has no body
    assert {"upload_model", "upload_dataset", "create_job"} <= set(bodies)
    for op_id, body in bodies.items():
        (media, content), = body["content"].items()
        assert content.get("examples"), f"{op_id} has no examples"
        if media == "multipart/form-data":
            schema = content["schema"]
            assert schema["properties"]["file"]["format"] == "binary"
            for example in content["examples"].values():
                assert set(schema["required"]) <= set(example["value"]) <= set(schema["properties"]), op_id
        else:
            assert media == "application/json"
            for example in content["examples"].values():
                JobCreate.model_validate(example["value"])  # the API would accept it (ids aside)


def test_the_cancel_operation_takes_no_body(doc):
    assert "requestBody" not in doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]


def test_failures_are_documented_with_their_types(doc):
    from secateurs.api.openapi import JOB_ERROR_TYPES
    from secateurs.pruning import errors

    ops = {op["operationId"]: op for _, _, op in operations(doc)}
    upload = ops["upload_model"]["responses"]
    kinds = {example["value"]["type"].rsplit("/", 1)[1]
             for status in ("415", "422") for example in upload[status]["content"]["application/problem+json"]
             ["examples"].values()}
    assert kinds == {"unsafe-format", "invalid-model", "unsupported-model"}
    failed = ops["get_job"]["responses"]["200"]["content"]["application/json"]["examples"]["failed"]["value"]
    assert failed["error"]["type"] in JOB_ERROR_TYPES
    # every code the engine raises is a documented job error type
    codes = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)}
    assert codes - {"cancelled"} <= set(JOB_ERROR_TYPES), codes - set(JOB_ERROR_TYPES)
    from secateurs.pruning.limits import ResourceLimitError
    assert ResourceLimitError.code in JOB_ERROR_TYPES
