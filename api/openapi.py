"""The OpenAPI document's request bodies, with examples, for generated clients and the docs page.

Operation ids are the route functions' names (app.py), so they change only when a route is renamed;
tests/api/test_openapi.py pins them. The uploads read their multipart body as a stream (api/uploads.py),
so FastAPI cannot see their form: it is described here. Every example is checked against the API's own
request models by the tests.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def _form(file: str, **fields: dict[str, Any]) -> dict[str, Any]:
    """A multipart form: the uploaded `file` and optional fields."""
    return {"type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": file}, **fields}}


MODEL_FORM = _form(
    "ONNX (opset 13+, one file), or safetensors weights with `arch`. Pickles (.pt, .pth, .pkl), TorchScript "
    "and .pt2 archives are refused.",
    arch={"type": "string", "description": "Architecture of safetensors weights, e.g. resnet50, mobilenet_v2, "
                                           "resnet56_cifar."},
    num_classes={"type": "integer", "minimum": 1, "description": "Classifier size for `arch`."},
)
DATASET_FORM = _form(".npz: `x` float32 inputs exactly as the model takes them (e.g. N x 3 x 224 x 224, "
                     "normalised); optional `y` integer class labels.")

#: The request bodies FastAPI cannot infer, by operation id.
FORMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "upload_model": (MODEL_FORM, {
        "onnx": {"summary": "An ONNX model", "value": {"file": "model.onnx"}},
        "safetensors": {"summary": "torchvision weights and their architecture",
                        "value": {"file": "resnet50.safetensors", "arch": "resnet50", "num_classes": 1000}},
    }),
    "upload_dataset": (DATASET_FORM, {
        "calibration": {"summary": "Calibration or evaluation data", "value": {"file": "calib.npz"}},
    }),
}

#: Examples of `POST /v1/jobs` bodies (the CLI's and the SDK's spec is the same object).
JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "magnitude": {
        "summary": "Half the MACs by L2 magnitude: no data needed",
        "value": {"model_id": "mdl_01hzx3k9q2", "spec": {"signal": "l2_norm", "target": {"macs": 0.5}}},
    },
    "data-driven": {
        "summary": "Taylor scores on calibration data, distillation, accuracy on labelled data, a webhook",
        "value": {
            "model_id": "mdl_01hzx3k9q2",
            "spec": {"signal": "taylor", "target": {"macs": 0.5}, "recovery": {"method": "distill"},
                     "calibration": {"dataset_id": "dst_01hzx3m4a7", "samples": 512},
                     "evaluation": {"dataset_id": "dst_01hzx3n8c1"}},
            "webhook_url": "https://ci.example.com/hooks/secateurs",
            "webhook_events": ["job.succeeded", "job.failed"],
        },
    },
    "latency": {
        "summary": "A latency budget in ONNX Runtime, channels kept at multiples of 16",
        "value": {"model_id": "mdl_01hzx3k9q2",
                  "spec": {"signal": "fpgm", "target": {"latency_ms": 5.0}, "round_to": 16,
                           "protect": ["classifier.*"]}},
    },
}

PROBLEM = "https://secateurs.dev/problems/"
#: A failed job's `error.type`: why it failed, as a stable word (SPEC.md). The first five are the user's to fix
#: (also the problem types of the 4xx answers that refuse the same at the door), `unsupported-model` is the
#: engine's limit, not the user's fault; the rest happened while it ran.
JOB_ERROR_TYPES = {
    "invalid-model": "the file is not a model the engine can read (truncated, not ONNX, weights not matching arch)",
    "invalid-spec": "the spec cannot be met for this model (protect patterns covering every layer, a bad input_shape)",
    "invalid-data": "the calibration or evaluation data cannot be used with this model",
    "invalid-input": "another input the user can fix (the message says which)",
    "unsafe-format": "a pickle, TorchScript or .pt2 archive: loading it would run code",
    "unsupported-model": "a valid model that uses what the engine cannot prune; the message names the op and node",
    "fidelity-budget": "the pruned model lost more than fidelity.max_drop against the original; metrics hold the report",
    "resource-limit": "past the job's memory, stage or time limit; the message names the stage and the figure",
    "verification-failed": "the exported ONNX disagreed with the pruned model: nothing was handed out",
    "storage-unavailable": "object storage stayed down past the retry window while the job's files were written",
    "worker-lost": "the job's worker was lost more times than the service retries",
    "internal-error": "an engine bug: the message gives the job id under which the traceback is in the worker's log",
}


def _problem(status: int, kind: str, detail: str) -> dict[str, Any]:
    return {"summary": kind, "value": {"type": PROBLEM + kind, "title": {415: "Unsupported media type",
                                                                         422: "Unprocessable content"}[status],
                                       "status": status, "detail": detail}}


#: Examples of the problems each operation answers with, by operation id and status.
PROBLEM_EXAMPLES: dict[str, dict[int, dict[str, Any]]] = {
    "upload_model": {
        415: {"unsafe-format": _problem(415, "unsafe-format", "this is a Python pickle (torch.save / .pt / .pth / "
                                        ".pkl): refused; send ONNX, or safetensors weights with arch")},
        422: {"invalid-model": _problem(422, "invalid-model", "the file is empty or truncated (12 bytes); send "
                                        "ONNX, or safetensors weights with arch"),
              "unsupported-model": _problem(422, "unsupported-model", "ONNX opset 6 is too old (the oldest taken "
                                            "is 7): re-export with opset 13 or newer")},
    },
    "create_job": {
        422: {"invalid-spec": _problem(422, "invalid-spec", "spec.calibration.dataset_id: signal 'taylor' needs "
                                       "calibration data: upload an .npz to /v1/datasets")},
    },
}

#: A failed job as `GET /v1/jobs/{id}` answers it.
FAILED_JOB_EXAMPLE = {
    "id": "job_01hzx3q5w8", "object": "job", "model_id": "mdl_01hzx3k9q2", "status": "failed", "stage": "failed",
    "progress": 0.05, "error": {"type": "unsupported-model", "message": "the dependency graph cannot be traced: "
                                "IndexError: index 64 is out of bounds for dimension 0 with size 64"},
    "metrics": None, "spec": {"signal": "l2_norm", "target": {"macs": 0.5}}, "attempts": 1, "webhook_url": None,
    "created_at": "2026-12-07T10:00:00Z", "started_at": "2026-12-07T10:00:01Z",
    "finished_at": "2026-12-07T10:00:04Z",
}


def install(app: FastAPI) -> None:
    """Serve the document with the upload forms and the job examples added (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            document(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(doc: dict[str, Any]) -> None:
    ops = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    for op_id, (schema, examples) in FORMS.items():
        ops[op_id]["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": schema, "examples": examples}}}
    ops["create_job"]["requestBody"]["content"]["application/json"]["examples"] = JOB_EXAMPLES
    for op_id, answers in PROBLEM_EXAMPLES.items():
        for status, examples in answers.items():
            ops[op_id].setdefault("responses", {})[str(status)] = {
                "description": "Refused: the problem's type says why",
                "content": {"application/problem+json": {"examples": examples}}}
    ok = ops["get_job"]["responses"]["200"]
    ok["description"] = ("The job. A failed one carries `error`: `type`, one of "
                         + ", ".join(f"`{k}` ({v})" for k, v in JOB_ERROR_TYPES.items()) + "; and `message`.")
    ok.setdefault("content", {}).setdefault("application/json", {})["examples"] = {
        "failed": {"summary": "A job that failed on what the engine cannot prune", "value": FAILED_JOB_EXAMPLE}}
