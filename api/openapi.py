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
