"""`make demo`: the whole product in one minute, nothing downloaded.

Starts the embedded stack (`secateurs up`: API + worker, SQLite, local files), creates an API key,
builds a sample model (torchvision MobileNetV2 with random weights, exported to ONNX), uploads it,
submits a pruning job, follows its progress over Server-Sent Events, downloads the pruned ONNX and its
report, checks the file in ONNX Runtime, prints where they are, and stops the stack.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
HOME = ROOT / ".demo"


def sample_model() -> bytes:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def main() -> int:
    t0 = time.monotonic()
    OUT.mkdir(exist_ok=True)
    HOME.mkdir(exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SECATEURS_HOME": str(HOME)}
    cli = [sys.executable, "-m", "secateurs.cli"]
    url = f"http://127.0.0.1:{port}"
    print(f"starting the embedded stack at {url} ...", flush=True)
    log = open(HOME / "up.log", "w")  # noqa: SIM115
    stack = subprocess.Popen([*cli, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if stack.poll() is not None:
                raise SystemExit(f"the stack exited ({stack.returncode}); see {HOME / 'up.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the stack did not become ready in 120 s")
            time.sleep(0.3)
        key = subprocess.run([*cli, "keys", "create", "--tenant", "demo"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        print("building a sample model (MobileNetV2, random weights) and uploading it ...", flush=True)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
            model = c.post("/v1/models", files={"file": ("mobilenet_v2.onnx", sample_model())})
            model.raise_for_status()
            spec = {"signal": "l2_norm", "target": {"macs": 0.5}}
            job = c.post("/v1/jobs", json={"model_id": model.json()["id"], "spec": spec})
            job.raise_for_status()
            job_id = job.json()["id"]
            print(f"job {job_id}: {json.dumps(spec)}", flush=True)
            with c.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}) as events:
                for line in events.iter_lines():
                    if line.startswith("data: "):
                        e = json.loads(line[6:])
                        pct = f"{e['progress'] * 100:3.0f}%" if e["progress"] is not None else "    "
                        print(f"  [{pct}] {e['type']:10s} {e['stage'] or '':8s} {e['message'] or ''}", flush=True)
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['status']}: {job['error']}")
            onnx_path, report_path = OUT / "mobilenet_v2.pruned.onnx", OUT / "report.json"
            onnx_path.write_bytes(c.get(job["artifacts"]["model.onnx"]).content)
            report_path.write_bytes(c.get(job["artifacts"]["report.json"]).content)
        import numpy as np
        import onnxruntime as ort

        out = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {"image": np.zeros((2, 3, 224, 224), np.float32)})[0]
        assert out.shape == (2, 1000)
        r = json.loads(report_path.read_text())
        print(f"\nMACs {r['macs_before'] / 1e6:.0f}M -> {r['macs_after'] / 1e6:.0f}M ({r['macs_kept'] * 100:.1f}% kept), "
              f"latency {r['latency_ms_before']:.2f} -> {r['latency_ms_after']:.2f} ms (ONNX Runtime, batch 1, 1 thread)")
        print(f"pruned model: {onnx_path}\nreport:       {report_path}")
        print(f"demo finished in {time.monotonic() - t0:.0f} s")
        return 0
    finally:
        stack.terminate()
        try:
            stack.wait(timeout=20)
        except subprocess.TimeoutExpired:
            stack.kill()


if __name__ == "__main__":
    sys.exit(main())
