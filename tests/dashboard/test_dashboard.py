"""The dashboard in a real headless Chromium on the embedded stack: key entry, upload, submit, a job
followed live to `succeeded` through the event stream, its report and charts, the download, the
comparison of two signals on one model, client-side validation, accessibility, phone width, and no
request to another origin."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import npz_bytes, onnx_of

from .audit import audit
from .conftest import Browsing

pytestmark = pytest.mark.timeout(240)


def tiny_onnx() -> bytes:
    """A three-convolution classifier with random weights: a job on it takes seconds."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return onnx_of(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), 16)


def tiny_data() -> bytes:
    rng = np.random.default_rng(0)
    return npz_bytes(x=rng.standard_normal((64, 3, 16, 16)).astype(np.float32), y=rng.integers(0, 10, 64))


def _bits(cut: str, n: int) -> list[int]:
    return [int(bit) for bit in "".join(f"{int(d, 16):04b}" for d in cut)[:n]]


def enter_key(b: Browsing, key: str) -> None:
    """By keyboard only: Tab to the key field, type, Enter."""
    page = b.page
    page.goto(b.stack.url + "/")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "key":
            break
    else:
        raise AssertionError("Tab never reached the API key field")
    page.keyboard.type(key)
    page.keyboard.press("Enter")


def no_problems(b: Browsing, view: str) -> None:
    problems = audit(b.page)
    assert not problems, f"{view}: {problems}"


def test_a_wrong_key_shows_an_error_and_is_not_kept(browsing: Browsing):
    enter_key(browsing, "sk_not_a_key")
    alert = browsing.page.locator("#alert")
    alert.wait_for(state="visible")
    assert "refused" in alert.inner_text() and "unknown or revoked" in alert.inner_text()
    assert browsing.page.get_attribute("#key", "aria-invalid") == "true"
    assert browsing.page.evaluate("sessionStorage.length") == 0
    assert browsing.page.locator("main h1").inner_text() == "Enter your API key"
    no_problems(browsing, "wrong key")
    browsing.screenshot("wrong-key")
    assert not browsing.foreign_requests()


def test_submit_watch_live_download_and_compare(browsing: Browsing, tmp_path):
    page, stack = browsing.page, browsing.stack
    key = stack.new_key("dashboard")
    enter_key(browsing, key)
    page.locator("main h1", has_text="Jobs").wait_for()
    assert page.evaluate("sessionStorage.getItem('secateurs.key')") == key
    no_problems(browsing, "empty jobs list")

    page.get_by_role("link", name="New job").click()
    page.get_by_label("Model file").set_input_files(
        {"name": "tiny.onnx", "mimeType": "application/octet-stream", "buffer": tiny_onnx()})
    page.get_by_role("button", name="Upload model").click()
    page.locator("#model-msg", has_text="Uploaded tiny.onnx").wait_for()
    page.get_by_label("Data file").set_input_files(
        {"name": "tiny.npz", "mimeType": "application/octet-stream", "buffer": tiny_data()})
    page.get_by_role("button", name="Upload data").click()
    page.locator("#data-msg", has_text="Uploaded tiny.npz").wait_for()
    no_problems(browsing, "new job")

    # the browser's own checks from the API's rules: nothing is sent while they fail
    page.get_by_label("Value").fill("1.5")
    page.get_by_label("Signal").select_option("taylor")
    page.get_by_label("Calibration data").select_option("")
    page.get_by_role("button", name="Submit job").click()
    assert "at most 1" in page.locator("#job-form-value-error").inner_text()
    assert "needs calibration data" in page.locator("#job-form-calibration-error").inner_text()
    assert page.evaluate("document.activeElement.id") == "job-value"
    assert not [u for u in browsing.requests if u.endswith("/v1/jobs")], "an invalid job was sent"
    no_problems(browsing, "new job with errors")
    browsing.screenshot("new-job-errors")

    page.get_by_label("Value").fill("0.5")
    page.get_by_label("Signal").select_option("l2_norm")
    calib = page.get_by_label("Calibration data")
    calib.select_option(index=1)
    page.get_by_label("Evaluation data").select_option(index=1)
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"#/jobs/job_"))
    job_id = page.url.rsplit("/", 1)[1]
    # the page is never reloaded from here: only the event stream can take it to succeeded
    page.locator("#job-status .badge", has_text="succeeded").wait_for(timeout=180_000)
    page.locator("#channels-chart svg").wait_for()
    assert any(u == stack.url + "/v1/events" for u in browsing.requests)
    log = page.locator("pre.log").inner_text()
    for stage in ("analyse", "score", "plan", "export", "verify"):
        assert stage in log, log

    with stack.client(key) as c:
        metrics = c.get(f"/v1/jobs/{job_id}").json()["metrics"]
    cards = page.locator("dl.cards").inner_text()
    assert "MACs" in cards and "Latency" in cards and "Accuracy" in cards and "Top-1 agreement" in cards
    assert f"{metrics['macs_kept'] * 100:.1f}% kept" in cards
    layers = metrics["layers"]
    # a before outline and an after bar per layer
    assert page.locator("#channels-chart svg rect.before").count() == len(layers)
    assert page.locator("#channels-chart svg rect.s0").count() == len(layers)
    widths = page.eval_on_selector_all("#channels-chart svg rect.s0", "rs => rs.map(r => +r.getAttribute('width'))")
    outlines = page.eval_on_selector_all("#channels-chart svg rect.before", "rs => rs.map(r => +r.getAttribute('width'))")
    pruned = [i for i, layer in enumerate(layers) if layer["channels_after"] < layer["channels_before"]]
    assert pruned and all(widths[i] < outlines[i] for i in pruned)
    stage_text = page.locator("ol.stages").inner_text()
    assert "export" in stage_text and " s" in stage_text
    assert page.locator("svg[aria-labelledby] title", has_text="Seconds per stage").count() == 1
    assert page.locator("circle.current").count() == 1  # this job on the accuracy-against-MACs plot
    no_problems(browsing, "job page")
    browsing.screenshot("job-succeeded")

    with page.expect_download() as dl:
        page.get_by_role("button", name="Download model.onnx").click()
    saved = tmp_path / "pruned.onnx"
    dl.value.save_as(saved)
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((2, 3, 16, 16), np.float32)})[0]
    assert out.shape == (2, 10)

    # a second signal on the same model, submitted over the API while the list watches
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator(f'tr[data-job-id="{job_id}"] .badge', has_text="succeeded").wait_for()
    with stack.client(key) as c:
        model_id = c.get(f"/v1/jobs/{job_id}").json()["model_id"]
        other = c.post("/v1/jobs", json={"model_id": model_id, "spec": {"signal": "fpgm", "target": {"macs": 0.5}}})
        assert other.status_code == 201, other.text
        other_id = other.json()["id"]
    page.locator(f'tr[data-job-id="{other_id}"] .badge', has_text="succeeded").wait_for(timeout=180_000)
    no_problems(browsing, "jobs list")
    browsing.screenshot("jobs")

    page.goto(f"{stack.url}/#/compare?model={model_id}&a={job_id}&b={other_id}")
    page.locator("#compare-chart svg").wait_for()
    assert page.locator("#compare-chart svg rect.s0").count() == len(layers)
    assert page.locator("#compare-chart svg rect.s1").count() == len(layers)
    heading = page.locator("#compare-heading").inner_text()
    assert re.search(rf"\d+ of {len(layers)} layers differ", heading)
    assert "A: l2_norm" in page.locator("main table").first.inner_text()
    # channel by channel: every channel either job cut is drawn, coloured by who cut it
    with stack.client(key) as c:
        cuts = [{layer["name"]: layer["cut"] for layer in c.get(f"/v1/jobs/{j}").json()["metrics"]["layers"]}
                for j in (job_id, other_id)]
    drawn = page.eval_on_selector_all(
        "#cut-chart svg rect[class^=cut]", "rs => rs.reduce((s, r) => s + +r.getAttribute('width'), 0)")
    assert drawn > 0
    overlap = page.locator("#cut-overlap").inner_text()
    both = either = 0
    for layer in layers:
        n = layer["channels_before"]
        a, b = (_bits(cut[layer["name"]], n) for cut in cuts)
        both += sum(x & y for x, y in zip(a, b, strict=True))
        either += sum(x | y for x, y in zip(a, b, strict=True))
    assert f"Of the {either} channels either signal cut, both cut {both} " in overlap, overlap
    no_problems(browsing, "compare")
    browsing.screenshot("compare")

    # a phone: nothing wider than the screen but the scrollable tables and charts
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{stack.url}/#/jobs/{job_id}")
    page.locator("#channels-chart svg").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    browsing.screenshot("job-phone")

    assert not browsing.foreign_requests(), browsing.foreign_requests()


def test_the_audit_finds_what_it_looks_for(browser):
    """The accessibility check itself: each kind of fault on a page made for it is reported."""
    page = browser.new_page()
    try:
        page.set_content("""<html><head><title>t</title></head><body>
          <input id="bare"><img src="data:,"><button id="empty"></button>
          <p id="pale" style="color:#bbb;background:#fff">pale text</p>
          <svg id="chart"><rect width="5" height="5"/></svg><span id="twice"></span><span id="twice"></span>
          <label for="named">Named</label><input id="named"></body></html>""")
        found = "\n".join(audit(page))
    finally:
        page.close()
    for fault in ("html has no lang", "input#bare: no label", "img", "button#empty: button without a name",
                  'p#pale "pale text": contrast', "svg#chart: chart without", "#twice is used 2 times"):
        assert fault in found, (fault, found)
    assert "input#named" not in found


def test_a_budget_search_shows_its_probes_and_each_outputs_fidelity(browsing: Browsing):
    page, stack = browsing.page, browsing.stack
    key = stack.new_key("dashboard-search")
    with stack.client(key) as c:
        model = c.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx())}).json()["id"]
        data = c.post("/v1/datasets", files={"file": ("tiny.npz", tiny_data())}).json()["id"]
        job = c.post("/v1/jobs", json={"model_id": model, "spec": {
            "signal": "l2_norm", "calibration": {"dataset_id": data},
            "fidelity": {"max_drop": 10, "search_probes": 3}, "measure": {"repeats": 3}}})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
    enter_key(browsing, key)
    page.locator("main h1", has_text="Jobs").wait_for()
    page.goto(f"{stack.url}/#/jobs/{job_id}")
    page.locator("#job-status .badge", has_text="succeeded").wait_for(timeout=180_000)
    with stack.client(key) as c:
        metrics = c.get(f"/v1/jobs/{job_id}").json()["metrics"]
    points = metrics["search"]["points"]
    assert len(points) == 3
    page.locator("#search-chart svg").wait_for()
    drawn = [p for p in points if "drop_points" in p]
    # measured: macs 0.5 and 0.25 hold (no drop), 0.125 loses every prediction: one point over the budget
    assert sum(not p["held"] for p in drawn) >= 1 and sum(p["held"] for p in drawn) >= 1
    assert page.locator("#search-chart svg circle.held").count() == sum(p["held"] for p in drawn)
    assert page.locator("#search-chart svg circle.over").count() == sum(not p["held"] for p in drawn)
    assert "smallest within a drop of 10 points (search)" in page.locator("main").inner_text()
    assert "search" in page.locator("ol.stages").inner_text()
    cards = page.locator("dl.cards").inner_text()
    (out,) = metrics["fidelity"]["outputs"]
    assert f"Fidelity of {out['output']}" in cards and f"{out['samples']} held-out calibration samples" in cards
    assert "budget 10 points held" in cards
    no_problems(browsing, "budget search")
    browsing.screenshot("job-search")


def test_data_is_matched_to_a_models_inputs_by_name_not_by_order(browsing: Browsing):
    import torch

    from tests.pruning.exporters import WithIds, multi_input_onnx

    page, stack = browsing.page, browsing.stack
    key = stack.new_key("dashboard-inputs")
    torch.manual_seed(0)
    image, ids = np.zeros((6, 3, 32, 32), np.float32), np.arange(6)
    with stack.client(key) as c:
        model = c.post("/v1/models", files={"file": ("ids.onnx", multi_input_onnx(
            WithIds(), {"image": torch.randn(1, 3, 32, 32), "ids": torch.zeros(1, dtype=torch.long)}, ("logits",)))})
        assert model.status_code == 201, model.text
        data = {}
        for name, arrays in {"reordered": {"ids": ids, "image": image, "mean": np.zeros(3)},  # not the graph's order
                             "no-ids": {"image": image, "x": image},
                             "small": {"image": image[:, :, :16], "ids": ids},
                             "float-ids": {"image": image, "ids": ids.astype(np.float32)}}.items():
            r = c.post("/v1/datasets", files={"file": (f"{name}.npz", npz_bytes(**arrays))})
            assert r.status_code == 201, r.text
            data[name] = r.json()["id"]
    enter_key(browsing, key)
    page.locator("main h1", has_text="Jobs").wait_for()
    page.get_by_role("link", name="New job").click()
    page.locator("#job-model").select_option(model.json()["id"])
    hint = page.locator("#job-model-hint").inner_text()
    assert "one key per input" in hint and "image: [3, 32, 32] float32; ids: one int64 per sample" in hint, hint
    page.get_by_label("Value").fill("1.5")  # keeps the form from sending a job whatever the data checks say

    def calibration_error(dataset: str) -> str:
        page.get_by_label("Calibration data").select_option(data[dataset])
        page.get_by_role("button", name="Submit job").click()
        page.locator("#job-form-value-error").wait_for()
        error = page.locator("#job-form-calibration-error")
        return error.inner_text() if error.count() else ""

    assert calibration_error("reordered") == ""
    assert "no key ids" in calibration_error("no-ids")
    assert "Key image: samples of shape [3, 16, 32] do not fit the model's input image [N, 3, 32, 32]" in \
        calibration_error("small")
    assert "Key ids holds float32, but the model's input ids takes int64" in calibration_error("float-ids")
    assert calibration_error("reordered") == ""
    assert not [u for u in browsing.requests if u.endswith("/v1/jobs")], "an invalid job was sent"
    no_problems(browsing, "new job, several inputs")
    browsing.screenshot("new-job-inputs")
    # the server takes the dataset the page took
    with stack.client(key) as c:
        job = c.post("/v1/jobs", json={"model_id": model.json()["id"], "spec": {
            "signal": "l1_norm", "calibration": {"dataset_id": data["reordered"]}}})
        assert job.status_code == 201, job.text
