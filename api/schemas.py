"""Request bodies and the JSON shape of each object the API returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from secateurs.db.models import Dataset, Job, JobEvent, Model, job_error
from secateurs.pruning.spec import PruneSpec
from sqlalchemy import Row
from starlette.responses import Response


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: str = Field(max_length=40)
    spec: PruneSpec = Field(default_factory=PruneSpec)
    webhook_url: str | None = Field(None, max_length=2000)
    webhook_events: list[str] | None = None


def _ts(v: Any) -> str | None:
    return v.isoformat() if v is not None else None


def model_out(m: Model) -> dict[str, Any]:
    return {"id": m.id, "object": "model", "filename": m.filename, "format": m.format, "arch": m.arch,
            "num_classes": m.num_classes, "input_shape": m.input_shape.get("shape"), "size_bytes": m.size_bytes,
            "sha256": m.sha256, "created_at": _ts(m.created_at), "inputs": model_inputs(m.input_shape)}


def model_inputs(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """Each input of the model, in graph order, as it declares it: name, shape (an int when fixed, the dimension's
    name when symbolic, null when neither) and numpy dtype. Rows stored before the declared dimensions were kept
    (`dims`) give what they have: the batch and every dimension that was not fixed are null, as their names were not
    kept; before several inputs were taken, one input from `shape`, its name and dtype null."""
    dtypes: dict[str, str] = stored.get("dtypes") or {}
    dims: dict[str, list[int | str | None]] | None = stored.get("dims")
    if dims is not None:
        return [{"name": n, "shape": d, "dtype": dtypes.get(n)} for n, d in dims.items()]
    shapes: dict[str | None, list[int]] = stored.get("inputs") or ({None: stored["shape"]} if stored.get("shape") else {})
    return [{"name": n, "shape": [None, *(d if d > 0 else None for d in s[1:])], "dtype": dtypes.get(n) if n else None}
            for n, s in shapes.items()]


def dataset_out(d: Dataset) -> dict[str, Any]:
    return {"id": d.id, "object": "dataset", "filename": d.filename, "samples": d.samples,
            "sample_shape": d.sample_shape.get("shape"), "labelled": d.labelled, "size_bytes": d.size_bytes,
            "sha256": d.sha256, "created_at": _ts(d.created_at), "arrays": dataset_arrays(d.sample_shape, d.samples)}


def dataset_arrays(stored: dict[str, Any], samples: int) -> list[dict[str, Any]]:
    """Each array of the .npz but y (which `labelled` tells), in archive order: key, shape (N first; [] for a scalar)
    and numpy dtype. Rows stored before every array was kept (`arrays`) have no dtypes (null); before several inputs
    were taken, only x was read, so x is the one array listed."""
    sample_shapes: dict[str, list[int]] = stored.get("inputs") or {"x": stored.get("shape") or []}
    arrays: dict[str, dict[str, Any]] | None = stored.get("arrays")
    if arrays is None:
        return [{"key": k, "shape": [samples, *s], "dtype": None} for k, s in sample_shapes.items()]
    return [{"key": k, "shape": [] if a["samples"] is None else [a["samples"], *sample_shapes.get(k, [])],
             "dtype": a["dtype"]} for k, a in arrays.items()]


TERMINAL = ("succeeded", "failed", "cancelled")


def job_out(j: Job | Row[Any]) -> dict[str, Any]:  # a Row of the jobs table has the same names
    out = {"id": j.id, "object": "job", "model_id": j.model_id, "status": j.status, "stage": j.stage,
           "progress": j.progress, "error": job_error(j), "metrics": j.metrics, "spec": j.spec,
           "attempts": j.attempts, "webhook_url": j.webhook_url, "created_at": _ts(j.created_at),
           "started_at": _ts(j.started_at), "finished_at": _ts(j.finished_at)}
    if j.status == "succeeded":
        base = f"/v1/jobs/{j.id}/artifacts"
        out["artifacts"] = {"model.onnx": f"{base}/model.onnx", "report.json": f"{base}/report.json"}
    return out


def event_out(e: JobEvent) -> dict[str, Any]:
    return {"id": e.id, "job_id": e.job_id, "type": e.type, "stage": e.stage, "progress": e.progress,
            "message": e.message, "data": e.data, "created_at": _ts(e.created_at)}


_OBJECT = TypeAdapter(dict[str, Any])


def json_object(body: dict[str, Any], status_code: int = 200) -> Response:
    """A JSON response encoded by pydantic-core (a quarter of the stdlib encoder's time on a job object; the
    same JSON, but a NaN becomes null where the stdlib encoder would fail the request)."""
    return Response(_OBJECT.dump_json(body), status_code=status_code, media_type="application/json")
