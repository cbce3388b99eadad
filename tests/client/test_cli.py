"""`secateurs submit` and `secateurs jobs` as a pipeline runs them: real processes against the embedded
stack, every exit code of the contract, one-line errors, machine output with --json."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.api.conftest import free_port, secateurs_cmd
from tests.conftest import npz_bytes

from .conftest import client_env, secateurs

FAST = {"measure": {"repeats": 3}}


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("secateurs: error: "), proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def succeeded(tmp_path_factory, tiny_onnx, embedded, tenant_key):
    """One `submit --wait` that succeeds, shared by the tests that look at its outcome and its job."""
    tmp = tmp_path_factory.mktemp("submit")
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"signal": "l1_norm", "target": {"params": 0.9}, **FAST}))
    out, report = tmp / "pruned.onnx", tmp / "report.json"
    proc = secateurs("submit", str(tiny_onnx), "--spec", str(spec), "--signal", "l2_norm", "--target", "macs=0.6",
                     "--wait", "-o", str(out), "--report", str(report), "--json",
                     env=client_env(tmp, embedded.url, tenant_key))
    return proc, out, report


@pytest.mark.slow
def test_submit_wait_saves_the_model_and_report_and_exits_0(succeeded):
    proc, out, report = succeeded
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "succeeded"
    assert job["saved"] == {"model.onnx": str(out.resolve()), "report.json": str(report.resolve())}
    # the flags override the --spec file's fields; the rest of the file stays
    assert job["spec"]["signal"] == "l2_norm" and job["spec"]["target"]["macs"] == 0.6
    assert job["spec"]["measure"]["repeats"] == 3
    r = json.loads(report.read_text())
    assert r["macs_after"] <= 0.6 * r["macs_before"] and r == job["metrics"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)
    # progress on stderr, plain lines when it is not a terminal, stages in order
    assert "[100%] done" in proc.stderr and "score" in proc.stderr and "\r" not in proc.stderr
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "partial files left behind"


@pytest.mark.slow
def test_jobs_list_show_and_events_json(succeeded, env):
    job = json.loads(succeeded[0].stdout)
    listed = secateurs("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)]
    shown = secateurs("jobs", "show", job["id"], "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["metrics"] == job["metrics"]
    events = secateurs("jobs", "events", job["id"], "--json", env=env)
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert kinds[0] == "queued" and "running" in kinds and kinds[-1] == "succeeded"
    human = secateurs("jobs", "show", job["id"], env=env)
    assert human.returncode == 0 and "succeeded" in human.stdout and "MACs" in human.stdout
    table = secateurs("jobs", "list", "--status", "failed", "--json", env=env)
    assert job["id"] not in [j["id"] for j in json.loads(table.stdout)]


@pytest.mark.slow
def test_a_dropped_event_stream_resumes_without_losing_or_repeating_events(succeeded, env, cutting_proxy, embedded):
    job_id = json.loads(succeeded[0].stdout)["id"]
    with httpx.Client(base_url=embedded.url, headers={"Authorization": f"Bearer {env['SECATEURS_API_KEY']}"}) as c:
        expected = [e["id"] for e in c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]]
    assert len(expected) > 5, "the job has too few events to cut its stream in the middle"
    proc = secateurs("jobs", "events", job_id, "--follow", "--json", "--url", cutting_proxy.url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == expected
    assert cutting_proxy.cut == 1 and cutting_proxy.streams == 2, "the stream was not cut and reopened"


@pytest.mark.slow
def test_submit_follows_a_live_job_through_a_dropped_stream(tiny_onnx, env, cutting_proxy, tmp_path):
    out = tmp_path / "p.onnx"
    proc = secateurs("submit", str(tiny_onnx), "--target", "channels=0.7", "--spec", _spec(tmp_path, FAST),
                     "-o", str(out), "--url", cutting_proxy.url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0 and f"wrote {out}" in proc.stdout
    assert cutting_proxy.cut == 1 and cutting_proxy.streams == 2
    # each event shown once: none replayed after the reconnection
    assert proc.stderr.count("job queued") == 1 and proc.stderr.count("job succeeded") == 1, proc.stderr


def _spec(tmp_path, spec: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown-signal", "data-signal-without-data", "pickle", "wrong-data-shape",
                                  "target", "missing-file", "loopback-webhook"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tiny_onnx, env, tmp_path):
    model, extra = str(tiny_onnx), []
    if case == "unknown-signal":
        extra = ["--signal", "nonsense"]
    elif case == "data-signal-without-data":
        extra = ["--signal", "taylor"]
    elif case == "pickle":
        model = str(tmp_path / "model.pth")
        (tmp_path / "model.pth").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    elif case == "wrong-data-shape":  # refused by the service: the samples do not fit the model's input
        data = tmp_path / "d.npz"
        data.write_bytes(npz_bytes(x=np.zeros((4, 3, 16, 16), np.float32)))
        extra = ["--signal", "activation_mean", "--calib", str(data)]
    elif case == "target":
        extra = ["--target", "macs=2"]
    elif case == "loopback-webhook":  # refused by the service unless the operator allows private targets
        extra = ["--webhook-url", "http://127.0.0.1:9/hook"]
    else:
        model = str(tmp_path / "absent.onnx")
    out = tmp_path / "out.onnx"
    proc = secateurs("submit", model, *extra, "-o", str(out), env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = one_line_error(proc)
    needle = {"unknown-signal": "nonsense", "data-signal-without-data": "spec.calibration.dataset_id",
              "pickle": "refused", "wrong-data-shape": "spec.calibration.dataset_id", "target": "target",
              "missing-file": "absent.onnx", "loopback-webhook": "SECATEURS_WEBHOOK_ALLOW_PRIVATE"}[case]
    assert needle in line, line
    assert not out.exists()


@pytest.mark.slow
def test_a_job_that_fails_in_the_worker_exits_3(tiny_onnx, env, tmp_path):
    out = tmp_path / "out.onnx"
    proc = secateurs("submit", str(tiny_onnx), "--protect", ".*", "--wait", "-o", str(out), "--json", env=env)
    assert proc.returncode == 3, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "failed" and "prunable" in job["error"]["message"], job
    assert job["error"]["type"] == "invalid-spec", job  # the spec's protect patterns took every layer
    assert f"job {job['id']} failed (invalid-spec): " in proc.stderr.splitlines()[-1]
    assert not out.exists()
    follow = secateurs("jobs", "events", job["id"], "--follow", env=env)
    assert follow.returncode == 3 and "failed" in follow.stdout
    deleted = secateurs("jobs", "delete", job["id"], "--json", env=env)
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"id": job["id"], "deleted": True}, deleted.stderr
    gone = secateurs("jobs", "show", job["id"], env=env)
    assert gone.returncode == 2 and "404" in one_line_error(gone)


@pytest.mark.slow
def test_a_job_cancelled_while_submit_waits_exits_4(tiny_onnx, calib_npz, env, tmp_path):
    # fine-tuning for many epochs: long enough to be cancelled while it runs
    spec = _spec(tmp_path, {"recovery": {"method": "finetune", "epochs": 1000, "max_minutes": 2}, **FAST})
    out = tmp_path / "out.onnx"
    waiting = subprocess.Popen(secateurs_cmd("submit", str(tiny_onnx), "--calib", str(calib_npz), "--spec", spec,
                                             "-o", str(out)), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        job_id, seen = None, []
        for line in waiting.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith("secateurs: job "):
                job_id = line.split()[2]
            if job_id and "recover" in line:
                break
        assert job_id, seen
        running = secateurs("jobs", "delete", job_id, env=env)  # refused while it runs, saying what to do
        assert running.returncode == 2 and "409" in one_line_error(running) and "cancel it first" in running.stderr
        cancel = secateurs("jobs", "cancel", job_id, "--json", env=env)
        assert cancel.returncode == 0, cancel.stderr
        assert json.loads(cancel.stdout)["status"] in ("running", "cancelled")
        stdout, stderr = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 4, "".join(seen) + stderr
    assert f"job {job_id} was cancelled" in stderr
    assert not out.exists()
    shown = secateurs("jobs", "show", job_id, "--json", env=env)
    assert json.loads(shown.stdout)["status"] == "cancelled"


def test_an_unreachable_service_exits_5(tiny_onnx, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = client_env(tmp_path, url, "sk_unused")
    for args in (["submit", str(tiny_onnx), "--wait"], ["jobs", "list"], ["jobs", "events", "job_x", "--follow"]):
        proc = secateurs(*args, env=env, timeout=60)
        assert proc.returncode == 5, (args, proc.stderr)
        assert url in one_line_error(proc)


def test_a_service_that_is_not_ready_exits_5_before_uploading(tiny_onnx, tmp_path):
    import http.server
    import threading

    uploads = []

    class NotReady(http.server.BaseHTTPRequestHandler):  # a service whose database is down answers this
        def do_GET(self):  # noqa: N802
            body = json.dumps({"title": "Service unavailable", "status": 503, "detail": "not ready: database"})
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def do_POST(self):  # noqa: N802
            uploads.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = secateurs("submit", str(tiny_onnx), "--wait", env=client_env(tmp_path, url, "sk_x"), timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 5, proc.stderr
    assert "not ready: database" in one_line_error(proc) and uploads == []


@pytest.mark.slow
def test_the_key_and_url_come_from_the_config_file_and_the_environment_wins(embedded, tenant_key, tmp_path):
    env = client_env(tmp_path)  # no SECATEURS_URL, no SECATEURS_API_KEY
    config = tmp_path / ".config" / "secateurs" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{embedded.url}"\napi_key = "{tenant_key}"\n')
    listed = secateurs("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    # ~/.config when XDG_CONFIG_HOME is not set; a key the service does not know is refused, saying where it came from
    no_xdg = {k: v for k, v in env.items() if k != "XDG_CONFIG_HOME"}
    config.write_text(f'url = "{embedded.url}"\napi_key = "sk_wrong"\n')
    wrong = secateurs("jobs", "list", env=no_xdg)
    assert wrong.returncode == 2 and "401" in one_line_error(wrong) and str(config) in wrong.stderr
    assert secateurs("jobs", "list", env={**no_xdg, "SECATEURS_API_KEY": tenant_key}).returncode == 0
    config.write_text("api_key = [1\n")
    broken = secateurs("jobs", "list", "--api-key", tenant_key, env=env)  # the URL is still read from the file
    assert broken.returncode == 2 and str(config) in one_line_error(broken)


def test_submit_builds_the_same_spec_as_prune():
    from secateurs.cli import _parser
    from secateurs.client.cli import build_spec as submit_spec
    from secateurs.pruning.cli import build_spec as prune_spec
    from secateurs.pruning.spec import PruneSpec

    flags = [
        ["--signal", "fpgm", "--target", "params=0.7", "--recover", "bn_recalibrate", "--calib", "c.npz"],
        ["--target", "latency_ms=3", "--scope", "local", "--round-to", "16", "--protect", "fc", "--protect", "x.*",
         "--steps", "3", "--input-shape", "1x3x64x64"],
        ["--signal", "taylor", "--calib", "c.npz", "--recover", "distill"],
        [],
    ]
    parser = _parser()
    for f in flags:
        prune = prune_spec(parser.parse_args(["prune", "m.onnx", "-o", "p.onnx", *f]))
        submit = PruneSpec.model_validate(submit_spec(parser.parse_args(["submit", "m.onnx", *f])))
        assert submit == prune, f


def test_a_bad_spec_is_refused_before_anything_is_sent(tiny_onnx, tmp_path):
    env = client_env(tmp_path, f"http://127.0.0.1:{free_port()}", "sk_unused")  # unreachable: must not matter
    for extra in (["--signal", "nonsense"], ["--target", "flops=0.5"], ["--spec", str(tmp_path / "none.json")],
                  ["--recover", "finetune"]):
        proc = secateurs("submit", str(tiny_onnx), *extra, env=env)
        assert proc.returncode == 2, (extra, proc.stderr)
        one_line_error(proc)  # nothing listens at the URL: 2, not 5, shows that no request was made


def test_the_progress_bar_redraws_one_line_on_a_terminal_with_stage_and_macs():
    import io

    from secateurs.client.cli import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    bar = Progress(term)
    bar.update({"type": "running", "stage": "starting", "progress": 0.0, "message": "job started"})
    bar.update({"type": "progress", "stage": "apply", "progress": 0.5, "message": "channels removed",
                "data": {"macs_fraction": 0.61}})
    bar.close()
    out = term.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1
    last = out.split("\r")[-1]
    assert "#" * 12 + " " * 12 in last and " 50%" in last and "apply" in last and last.rstrip().endswith("MACs 61.0%")


def test_client_commands_load_no_engine_and_no_server_packages(tmp_path):
    code = ("import sys; from secateurs.cli import main; "
            f"rc = main(['jobs', 'list', '--url', 'http://127.0.0.1:{free_port()}']); "
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'onnx', 'onnxruntime', 'numpy', 'fastapi', 'sqlalchemy', 'celery'}))")
    out = subprocess.run([sys.executable, "-c", code], env=client_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "5 []", out.stdout + out.stderr
