"""The engine's one entry point: import -> analyse -> score -> plan -> apply -> export -> verify -> report."""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch_pruning as tp
from torch import nn

from . import fidelity, frozen, inputs, limits, onnx_tools, recovery, search
from .analysis import COUNTED, Analysis, analyse
from .custom_ops import CUSTOM_PRUNERS, ChannelSelect
from .data import Dataset
from .errors import (
    BadDataError,
    Cancelled,
    FidelityError,
    PruningError,
    SpecError,
    TargetUnreachable,
    UnsupportedModelError,
    VerificationError,
)
from .inputs import Example, GraphInput, as_tuple
from .loading import LoadedModel, load_model, second_shape
from .planner import Planner
from .signals import ScoringContext, make_scorer
from .signals.compose import composed
from .spec import PruneSpec, Target

Progress = Callable[[str, float, str, dict[str, Any]], None]
CancelCheck = Callable[[], bool]

STAGES = ("import", "analyse", "score", "plan", "apply", "recover", "export", "verify", "report", "fidelity")


@dataclass
class PruneResult:
    onnx: bytes
    report: dict[str, Any]
    model: nn.Module = field(repr=False)
    original: bytes | None = field(default=None, repr=False)  # the original as ONNX, as it was compared


class _Run:
    """Progress, cancellation, limits and stage timing for one call of `prune`."""

    def __init__(self, progress: Progress | None, should_cancel: CancelCheck | None, spec: PruneSpec) -> None:
        self.progress = progress
        self.should_cancel = should_cancel
        self.seconds: dict[str, float] = {}
        caps = spec.limits.stage_minutes
        self.watchdog = limits.Watchdog(spec.limits.minutes, limits.default_stage_minutes() if caps is None else caps)
        self.memory_gb = spec.limits.memory_gb or limits.default_memory_gb()
        self.cap: limits.MemoryCap | None = None
        self.current = "import"
        self.span = (0.0, 1.0)  # the part of the job's progress a budget-search probe reports in

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("the job was cancelled")
        self.watchdog.check(self.current)

    def memory_ran_out(self, e: BaseException) -> bool:
        # the engine's own verdicts stand: a missed budget, a spec or data the user can fix, a cancel
        if isinstance(e, (limits.ResourceLimitError, Cancelled, FidelityError, SpecError, BadDataError)):
            return False
        return limits.out_of_memory(e) or (self.cap is not None and self.cap.hit())

    def out_of_memory(self, stage: str) -> limits.ResourceLimitError:
        hint = limits.HINTS.get(stage)
        return limits.ResourceLimitError(
            f"stage {stage} needed more memory than the job's limit of {self.memory_gb:g} GiB"
            + (f": {hint}" if hint else ""))

    def tell(self, stage: str, fraction: float, message: str, **metrics: Any) -> None:
        if self.progress is not None:
            lo, hi = self.span
            self.progress(stage, lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message, metrics)

    @contextmanager
    def stage(self, name: str, fraction: float, message: str):  # type: ignore[no-untyped-def]
        self.current = name
        self.check()
        self.tell(name, fraction, message)
        t0 = time.perf_counter()
        try:
            with self.watchdog.stage(name):
                yield
        except Exception as e:
            if self.memory_ran_out(e):
                raise self.out_of_memory(name) from None
            raise
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def prune(
    model: bytes | LoadedModel,
    spec: PruneSpec,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    calibration: Dataset | None = None,
    evaluation: Dataset | None = None,
    progress: Progress | None = None,
    should_cancel: CancelCheck | None = None,
    device: str | None = None,
) -> PruneResult:
    """Prune a model to the spec's target and return the verified ONNX bytes with their report, within the
    spec's limits (memory and wall time: pruning/limits.py)."""
    run = _Run(progress, should_cancel, spec)
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    # a CUDA context reserves far more address space than it uses: there the cap would stop every job
    cap = contextlib.nullcontext(None) if on_gpu else limits.memory_cap(run.memory_gb)
    run.watchdog.start()  # before the cap, as its thread is
    try:
        with cap as run.cap:
            try:
                with run.watchdog.job(lambda: run.current):
                    return _prune(run, model, spec, arch=arch, num_classes=num_classes, calibration=calibration,
                                  evaluation=evaluation, device=device)
            except Exception as e:
                if run.memory_ran_out(e):
                    raise run.out_of_memory(run.current) from None
                raise
    except limits.PastLimit:  # delivered just as the job's block ended, after its own handler
        raise run.watchdog.error() from None
    finally:
        run.watchdog.stop()


def _prune(
    run: _Run,
    model: bytes | LoadedModel,
    spec: PruneSpec,
    *,
    arch: str | None,
    num_classes: int | None,
    calibration: Dataset | None,
    evaluation: Dataset | None,
    device: str | None,
) -> PruneResult:
    if spec.searches:
        return _search(run, model, spec, arch=arch, num_classes=num_classes, calibration=calibration,
                       evaluation=evaluation, device=device)
    target = spec.target
    assert target is not None  # set unless the spec searches
    torch.manual_seed(0)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with run.stage("import", 0.0, "reading the model"):
        loaded = _load(model, spec, arch, num_classes, calibration if calibration is not None else evaluation)
        calibration = _check_data_fits(loaded, calibration, "calibration")
        evaluation = _check_data_fits(loaded, evaluation, "evaluation")
        if spec.needs_data and calibration is None:
            raise SpecError(
                f"signal {spec.signal_name!r} / recovery {spec.recovery.method!r} needs calibration data "
                "(calibration.dataset_id, or --calib DATA.npz)"
            )
        if spec.needs_labels and (calibration is None or calibration.y is None):
            raise SpecError("recovery finetune needs labels: calibration data with a y array")
        if spec.fidelity.max_drop is not None and calibration is None and evaluation is None:
            raise SpecError("fidelity.max_drop needs data to measure the pruned model against the original on: "
                            "calibration or evaluation data (--calib or --eval)")
        # Fidelity is measured on data no signal or recovery step sees: the evaluation set, or a held-out part
        # of the calibration data, which from here on is only the rest.
        held_out: Dataset | None = None
        unmeasured = "no data: give evaluation data (--eval), or calibration data (--calib) to hold some out"
        if evaluation is None and calibration is not None:
            calibration, held_out = fidelity.split(calibration)
            unmeasured = (f"only {len(calibration)} calibration samples, too few to hold some out "
                          f"(at least {fidelity.MIN_TO_SPLIT}), and no evaluation data")
            if held_out is None and spec.fidelity.max_drop is not None:
                raise SpecError(f"fidelity.max_drop needs evaluation data or at least {fidelity.MIN_TO_SPLIT} "
                                f"calibration samples (a fifth is held out to measure on); got {len(calibration)}")
        # the engine prunes the module it loaded in place: a caller's own LoadedModel keeps its module
        net = loaded.module if loaded is not model else copy.deepcopy(loaded.module)
        example = inputs.example(loaded.inputs)
        if loaded.onnx_bytes is None:
            before_onnx = onnx_tools.export(
                net, example, input_name=[i.name for i in loaded.inputs], output_names=loaded.output_names,
                dynamic_axes=_dynamic_axes(loaded, spec), opset=spec.export.opset,
            )
        else:
            before_onnx = loaded.onnx_bytes
        before = onnx_tools.stats(before_onnx, loaded.inputs)
        fixed_batch = _fixed_batch(loaded, spec)
        latency_batch = fixed_batch or spec.measure.batch  # a fixed-batch model runs at its own batch
        original = copy.deepcopy(net).to(dev).eval()
        net = net.to(dev)
        example = inputs.to(example, dev)

    channels_before = _channels(net)
    kind = target.kind
    goal = target.value
    steps = spec.schedule.steps
    latency_goal: dict[str, Any] = {}
    if kind == "latency_ms":
        # A measured budget: search the MACs budget whose exported model meets it (see _latency_plan).
        with run.stage("plan", 0.04, "measuring the original's latency"):
            lat0 = onnx_tools.latency(before_onnx, before_onnx, loaded.inputs, batch=latency_batch,
                                      threads=spec.measure.threads, repeats=spec.measure.repeats)[0]
        latency_goal = {"target_ms": goal, "original_ms": lat0}
        kind, goal, steps = "macs", min(1.0, goal / lat0), 1
    origin = {name: np.arange(c) for name, c in channels_before.items()}

    @functools.cache
    def output_kinds() -> list[fidelity.OutputKind] | None:
        """What each output is, read once: None with a frozen region, whose module answers the tensors the frozen
        nodes read, not the model's outputs (those are distilled as the first output always was)."""
        if loaded.frozen is not None or calibration is None:
            return None
        return _output_kinds(before_onnx, loaded, spec, _probe_inputs(loaded, calibration))

    base_total = 0.0  # the original's MACs, parameters or channels: the measure of the target's kind
    total = 0.0  # the same measure of the pruned model so far
    extra: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for step in range(1, steps + 1):
        step_goal = goal ** (step / steps)  # geometric: every round removes the same share
        base = 0.4 * (step - 1) / steps
        with run.stage("analyse", 0.05 + base, f"tracing dependency groups (round {step}/{steps})"):
            analysis = _analyse(net, example, spec, loaded)
            if step == 1:  # net is still the original: its MACs were counted in the analysing forward
                base_total = analysis.macs if kind == "macs" else _measure(net, example, kind)
                extra["protected_layers"] = analysis.protected
                extra["frozen_groups"] = analysis.frozen
                extra["tracing_index_entries"] = analysis.trace_entries  # estimated before it ran, at most
        with run.stage("score", 0.15 + base, f"scoring channels with {spec.signal_name}"):
            ctx = ScoringContext(
                model=net, analysis=analysis, calibration=calibration, teacher=original,
                samples=spec.calibration.samples, device=str(dev), has_batchnorm=loaded.has_batchnorm,
                options={**spec.signal_options.model_dump(), "target": goal, "kind": kind,
                         "lr": spec.recovery.lr, "batch_size": spec.recovery.batch_size},
                progress=lambda f, msg, metrics, b=base: run.tell("score", 0.15 + b + 0.1 * f, msg, **metrics),
                check=run.check, output_kinds=output_kinds,
            )
            scores = _score(ctx, spec)
            extra.update(ctx.report)
            options.update(ctx.options)
        with run.stage("plan", 0.25 + base, f"searching the plan for {kind} <= {step_goal:.3f}"):
            if latency_goal:
                net, kept, total = _latency_plan(_Copies(analysis, example), scores, spec, run, ctx, loaded,
                                                 before_onnx, base_total, latency_goal)
                extra["latency_search"] = latency_goal
            else:
                net, kept, total = _plan_and_apply(_Copies(analysis, example), scores, spec, kind, step_goal,
                                                   base_total, run, ctx)
            origin = {n: origin[n][k] for n, k in kept.items() if n in origin}
        if calibration is not None and steps > 1 and step < steps and spec.recovery.method != "none":
            with run.stage("recover", 0.3 + base, "re-estimating BatchNorm between rounds"):
                recovery.bn_recalibrate(net, calibration, samples=spec.calibration.samples, device=dev)
    run.tell("apply", 0.5, "channels removed", **{f"{kind}_fraction": total / max(base_total, 1e-9)})
    kind, goal = target.kind, target.value

    method = spec.recovery.method
    kinds: list[fidelity.OutputKind] | None = None  # what each output is: read once, when first needed
    if (method != "none" or options.get("reconstruct")) and calibration is not None:
        with run.stage("recover", 0.55, f"recovering accuracy ({method})"):
            if method == "distill":
                kinds = output_kinds()
            extra["recovery"] = _recover(net, original, origin, calibration, spec, dev, run, options, kinds)

    net = net.cpu().eval()
    example = inputs.to(example, "cpu")
    with run.stage("export", 0.85, "exporting ONNX"):
        part_onnx, after_onnx = _export(net, example, loaded, spec)
        after = onnx_tools.stats(after_onnx, loaded.inputs)
    with run.stage("verify", 0.9, "checking ONNX Runtime against PyTorch"):
        probe = _probe_inputs(loaded, calibration)
        axes = _dynamic_axes(loaded, spec)
        expected = None if loaded.frozen is not None else [
            [axes.get(name, {}).get(i, d) for i, d in enumerate(shape)]
            for name, shape in zip(loaded.output_names, before.output_shapes, strict=False)]
        max_abs_diff = onnx_tools.verify(part_onnx, net, probe, expected, fixed_batch=fixed_batch,
                                         batch_name=axes.get(loaded.input_name, {}).get(0))
        batches = (fixed_batch,) if fixed_batch else (1, 4)
        if loaded.frozen is not None:  # the joined graph answers as the sent one did, output for output
            onnx_tools.same_output_shapes(before_onnx, after_onnx, loaded.inputs, batches)
        other = _second_shapes(loaded.inputs)
        # symbolic height, width or length: checked at a second size too, where the original runs at all
        if other is not None and not onnx_tools.same_output_shapes(before_onnx, after_onnx, other, batches[:1],
                                                                   original_may_fail=True):
            other = None
        lat_before, lat_after = onnx_tools.latency(
            before_onnx, after_onnx, loaded.inputs,
            batch=latency_batch, threads=spec.measure.threads, repeats=spec.measure.repeats,
        )
    with run.stage("report", 0.95, "writing the report"):
        report: dict[str, Any] = {
            "signal": spec.signal_name,
            "signal_spec": spec.model_dump(mode="json")["signal"],
            "target": target.model_dump(exclude_none=True),
            "scope": spec.scope,
            "source": loaded.source,
            "arch": loaded.arch,
            "input_shape": loaded.input_shape,
            "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in loaded.inputs],
            # with symbolic dimensions, the returned model was also run at the second shape (the first input's)
            "input_shapes_checked": [loaded.input_shape, *([other[0].shape] if other is not None else [])],
            "prepasses": loaded.prepasses,
            "macs_before": before.macs,
            "macs_after": after.macs,
            "macs_kept": after.macs / before.macs if before.macs else 1.0,
            "params_before": before.params,
            "params_after": after.params,
            "params_kept": after.params / before.params if before.params else 1.0,
            "onnx_bytes_before": before.bytes,
            "onnx_bytes_after": after.bytes,
            "latency_ms_before": round(lat_before, 4),
            "latency_ms_after": round(lat_after, 4),
            "latency_batch": latency_batch,
            "latency_threads": spec.measure.threads,
            "speedup": lat_before / lat_after if lat_after > 0 else None,
            "max_abs_diff": max_abs_diff,
            "layers": _layer_table(channels_before, _channels(net), origin),
            "device": dev.type,
            **extra,
        }
        if loaded.frozen is not None:
            report["frozen"] = loaded.frozen.describe(
                sum(after.per_node.get(n.name or n.output[0], 0) for n in loaded.frozen.nodes))
            # the target applies to the part that can be pruned; the frozen nodes keep what they cost
            report["prunable_kept"] = total / base_total if base_total else 1.0
        if target.kind in ("macs", "params"):
            kept = report["prunable_kept"] if loaded.frozen is not None else report[f"{kind}_kept"]
            report["target_met"] = kept <= goal + 1e-9
        elif target.kind == "latency_ms":
            report["latency_target_ms"] = target.value
            report["target_met"] = lat_after <= target.value * 1.05
    with run.stage("fidelity", 0.97, "checking the pruned model against the original"):
        check = evaluation if evaluation is not None else held_out
        source = "evaluation" if evaluation is not None else "held-out calibration"
        if check is not None and (kinds is None or loaded.frozen is not None):
            kinds = _output_kinds(before_onnx, loaded, spec, _probe_inputs(loaded, check))
        report["fidelity"] = _fidelity(before_onnx, after_onnx, kinds or [], spec, check, source, fixed_batch,
                                       unmeasured)
        report.update(_legacy_fidelity(report["fidelity"], source))
    report["stage_seconds"] = {k: round(v, 4) for k, v in run.seconds.items()}
    if spec.fidelity.max_drop is not None and not report["fidelity"].get("measured"):
        raise SpecError(f"fidelity.max_drop could not be checked: {report['fidelity'].get('reason')}")
    budget = report["fidelity"].get("held")
    if budget is False:
        worst = max(report["fidelity"]["outputs"], key=lambda o: o["drop_points"])
        raise FidelityError(
            f"the pruned model lost {worst['drop_points']:.2f} points of {worst['metric']} on output "
            f"{worst['output']!r} against the original ({worst['value']:.4f} on {worst['samples']} "
            f"{report['fidelity']['data']} samples), over the budget of {spec.fidelity.max_drop:g}", report)
    if run.span == (0.0, 1.0):  # a budget-search probe is not the job's end
        run.tell("done", 1.0, "finished", macs_kept=report["macs_kept"])
    return PruneResult(after_onnx, report, net, before_onnx)


def _search(
    run: _Run,
    model: bytes | LoadedModel,
    spec: PruneSpec,
    *,
    arch: str | None,
    num_classes: int | None,
    calibration: Dataset | None,
    evaluation: Dataset | None,
    device: str | None,
) -> PruneResult:
    """fidelity.max_drop without a target: the smallest MACs fraction whose pruned (and recovered) model stays
    within the budget (search.py). Probes are measured on data set apart for the search; the model chosen is then
    checked once more on data neither the search nor any signal or recovery step saw, and only that check decides."""
    max_drop = spec.fidelity.max_drop
    assert max_drop is not None
    with run.stage("import", 0.0, "reading the model"):
        loaded = _load(model, spec, arch, num_classes, calibration if calibration is not None else evaluation)
        calibration = _check_data_fits(loaded, calibration, "calibration")
        evaluation = _check_data_fits(loaded, evaluation, "evaluation")
        fit, probe_on, probe_source, final, final_source = _search_data(calibration, evaluation)
    budget = spec.fidelity.search_minutes * 60
    if run.watchdog.end is not None:  # the job's own wall time, less a share for the final check
        budget = min(budget, 0.9 * (run.watchdog.end - time.monotonic()))
    probes = spec.fidelity.search_probes
    started = time.monotonic()
    broken: list[PruningError] = []

    def probe(fraction: float) -> search.Probe:
        done = len(points)
        run.span = (0.02 + 0.9 * done / probes, 0.02 + 0.9 * (done + 1) / probes)
        sub = spec.model_copy(update={"target": Target(macs=fraction),
                                      "fidelity": spec.fidelity.model_copy(update={"max_drop": None})})
        t0 = time.monotonic()
        try:
            result = _prune(run, loaded, sub, arch=arch, num_classes=num_classes, calibration=fit,
                            evaluation=probe_on, device=device)
        except TargetUnreachable as e:
            return search.Probe(fraction, False, time.monotonic() - t0, reason=str(e))
        except (UnsupportedModelError, VerificationError) as e:
            # a pruned copy that breaks or exports wrong at this fraction may not at a larger one: a miss, unless
            # every probe ends so (then the first such error is the job's)
            broken.append(e)
            return search.Probe(fraction, False, time.monotonic() - t0, reason=f"{e.code}: {e}")
        finally:
            run.span = (0.0, 1.0)
        if not result.report["fidelity"].get("measured"):
            raise SpecError(f"fidelity.max_drop could not be checked: {result.report['fidelity'].get('reason')}")
        outputs = result.report["fidelity"]["outputs"]
        drop = max(o["drop_points"] for o in outputs)
        return search.Probe(fraction, drop <= max_drop + 1e-9, time.monotonic() - t0, drop_points=drop,
                            macs_kept=result.report["macs_kept"], result=result, report=result.report)

    points: list[dict[str, Any]] = []

    def tell(p: search.Probe, i: int) -> None:
        points.append(p.point())
        verdict = "within" if p.held else "over"
        figure = f"drop {p.drop_points:.2f} points, {verdict} the budget" if p.drop_points is not None else p.reason
        run.tell("search", 0.02 + 0.9 * (i + 1) / probes, f"probe {i + 1}: macs {p.fraction:.3f}: {figure}",
                 **p.point())

    outcome = search.run(probe, probes=probes, seconds=budget, on_probe=tell)
    summary: dict[str, Any] = {
        "max_drop": max_drop, "points": points, "stopped": outcome.stopped,
        "seconds": round(time.monotonic() - started, 2), "probe_data": probe_source, "probe_samples": len(probe_on),
        "fit_samples": 0 if fit is None else len(fit),
    }
    if outcome.best is None and broken and len(broken) == len(outcome.probes):
        raise broken[0]
    if outcome.best is None:
        # the report of the probe that came closest (the largest fraction with figures), with the search's points
        measured = [p for p in outcome.probes if p.report is not None]
        closest = max(measured, key=lambda p: p.fraction).report if measured else {}
        raise FidelityError(
            f"no compression tried stays within fidelity.max_drop {max_drop:g} ("
            + ", ".join(f"macs {p.fraction:.3f}: " + (f"lost {p.drop_points:.2f} points" if p.drop_points is not None
                                                       else "cannot be reached") for p in outcome.probes)
            + "): allow a larger drop, add recovery, or keep the original",
            {**(closest or {}), "search": summary})
    chosen: PruneResult = outcome.best.result
    summary["chosen_macs_fraction"] = round(outcome.best.fraction, 4)
    report = chosen.report
    report["search"] = summary
    report["target"] = {"max_drop": max_drop, "macs": round(outcome.best.fraction, 4)}
    with run.stage("fidelity", 0.95, "checking the chosen model against the original on data the search never saw"):
        assert chosen.original is not None
        kinds = _output_kinds(chosen.original, loaded, spec, _probe_inputs(loaded, final))
        report["fidelity"] = _fidelity(chosen.original, chosen.onnx, kinds, spec, final, final_source,
                                       _fixed_batch(loaded, spec), "")
        for key in ("agreement", "evaluated_samples", "evaluated_on", "accuracy_before", "accuracy_after"):
            report.pop(key, None)
        report.update(_legacy_fidelity(report["fidelity"], final_source))
    report["stage_seconds"] = {k: round(v, 4) for k, v in run.seconds.items()}
    if not report["fidelity"].get("measured"):
        raise SpecError(f"fidelity.max_drop could not be checked: {report['fidelity'].get('reason')}")
    if report["fidelity"].get("held") is False:
        worst = max(report["fidelity"]["outputs"], key=lambda o: o["drop_points"])
        raise FidelityError(
            f"the model the search chose (macs {outcome.best.fraction:.3f}, {outcome.best.drop_points:.2f} points "
            f"on the search's data) lost {worst['drop_points']:.2f} points of {worst['metric']} on output "
            f"{worst['output']!r} on the {report['fidelity']['samples']} {final_source} samples, over the budget of "
            f"{max_drop:g}", report)
    run.tell("done", 1.0, "finished", macs_kept=report["macs_kept"])
    return chosen


def _load(model: bytes | LoadedModel, spec: PruneSpec, arch: str | None, num_classes: int | None,
          data: Dataset | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return load_model(model, arch=arch, num_classes=num_classes, input_shape=spec.input_shape,
                      data_shapes=None if data is None else {k: list(a.shape) for k, a in data.members.items()})


def _search_data(calibration: Dataset | None, evaluation: Dataset | None,
                 ) -> tuple[Dataset | None, Dataset, str, Dataset, str]:
    """(what signals and recovery see, what the search measures its probes on and its name, what the chosen model is
    checked on and its name). The check is on the evaluation data if given, else on a held-out fifth of the calibration
    data; the probes on a fifth of the calibration data left, else a fifth of the evaluation data."""
    need = (f"the budget search (fidelity.max_drop without a target) needs evaluation data with at least "
            f"{fidelity.MIN_TO_SPLIT} samples or at least {fidelity.MIN_TO_SPLIT + fidelity.MIN_HELD_OUT} calibration "
            "samples: a part to measure its probes on, and another to check the chosen model on")
    if calibration is None:
        if evaluation is None:
            raise SpecError("fidelity.max_drop needs data to measure the pruned model against the original on: "
                            "calibration or evaluation data (--calib or --eval)")
        final, probe_on = fidelity.split(evaluation)
        if probe_on is None:
            raise SpecError(need)
        return None, probe_on, "part of the evaluation data", final, "evaluation"
    if evaluation is not None:
        fit, probe_on = fidelity.split(calibration)
        if probe_on is not None:
            return fit, probe_on, "held-out calibration", evaluation, "evaluation"
        final, probe_on = fidelity.split(evaluation)
        if probe_on is None:
            raise SpecError(need)
        return calibration, probe_on, "part of the evaluation data", final, "evaluation"
    rest, final_part = fidelity.split(calibration)
    if final_part is None:
        raise SpecError(need)
    fit, probe_on = fidelity.split(rest)
    if probe_on is None:
        raise SpecError(need)
    return fit, probe_on, "held-out calibration", final_part, "held-out calibration"


# ------------------------------------------------------------------------------------------- the stages


def _analyse(net: nn.Module, example: Example, spec: PruneSpec, loaded: LoadedModel) -> Analysis:
    try:
        return analyse(net, example, spec.protect)
    except UnsupportedModelError as e:
        if loaded.frozen is None:
            raise
        node, why = next(iter(loaded.frozen.reasons.items()))
        raise UnsupportedModelError(f"{e}; node {node!r} ({why}) and what follows it are kept as they are") from None


def _score(ctx: ScoringContext, spec: PruneSpec) -> dict[int, np.ndarray]:
    if isinstance(spec.signal, str):
        scorer = make_scorer(spec.signal, ctx)
    else:
        scorer = composed(ctx, spec.signal.compose.model_dump())
    scores: dict[int, np.ndarray] = {}
    for i, g in enumerate(ctx.analysis.groups):
        s = scorer(i)
        if s is None:
            continue
        arr = np.asarray(s, dtype=np.float64)
        if arr.shape != (g.channels,) or not np.isfinite(arr).all():
            continue
        scores[i] = np.maximum(g.unit_scores(arr), 0.0)
    if not scores:
        raise SpecError(f"signal {spec.signal_name!r} could score no layer of this model")
    ctx.forced = {g: f for g, f in ctx.forced.items() if g in scores and ctx.analysis.groups[g].blocks == 1}
    return scores


VALIDATION_MOST = 256  # distillation's validation samples (a fifth of its data, at most this many)


def _recover(net: nn.Module, original: nn.Module, origin: dict[str, np.ndarray], data: Dataset,
             spec: PruneSpec, dev: torch.device, run: _Run, options: dict[str, Any],
             kinds: list[fidelity.OutputKind] | None = None) -> dict[str, Any]:
    """Recovery on `data`. Distillation with the outputs' kinds compares every output by its kind, keeps a part
    of `data` apart to validate on (the best state there is kept) and leaves flips out for text read in order."""
    r = spec.recovery
    method = r.method
    samples = spec.calibration.samples
    out: dict[str, Any] = {"method": method}
    validation = None
    if method == "distill" and kinds is not None:
        data, validation = fidelity.split(data, most=VALIDATION_MOST)

    def tick(fraction: float, message: str, metrics: dict[str, float]) -> None:
        run.check()
        run.tell("recover", 0.55 + 0.3 * fraction, message, **metrics)

    has_bn = recovery.has_batchnorm(net)
    refit = method == "reconstruct" or bool(options.get("reconstruct"))
    refit = refit or (method in ("distill", "finetune") and r.reconstruct_first)
    if refit:
        # Each layer is refit to the original layer's output (before its BatchNorm), so the refit runs
        # against the original statistics and BatchNorm is re-estimated afterwards.
        out["layers_refit"] = recovery.reconstruct(net, original, origin, data, samples=samples, device=dev, tick=tick)
    if has_bn:  # cheap, nearly always a gain, and the better starting point for training
        out["bn_recalibrated"] = recovery.bn_recalibrate(net, data, samples=samples, device=dev)
    if method in ("distill", "finetune"):
        out.update(recovery.train(
            net, data, teacher=original if method == "distill" else None, epochs=r.epochs, lr=r.lr,
            batch_size=r.batch_size, device=dev, tick=tick, temperature=r.temperature,
            max_seconds=None if r.max_minutes is None else r.max_minutes * 60, precision=r.precision,
            mixup=r.mixup, kinds=kinds, validation=validation,
            flips=not any(k.kind == "sequence" for k in kinds or []),
        ))
    return out


class _Copies:
    """Unpruned copies of the analysed model for plans to be applied to, each with its dependency graph.
    The first is the analysed model itself with the graph the analysis traced: tracing a second graph
    costs about as much as Torch-Pruning's whole pruning step. A deep copy taken before it is pruned
    serves the attempts after it (a plan measured over or well under the goal), each tracing its own."""

    def __init__(self, analysis: Analysis, example: Example) -> None:
        self.analysis = analysis
        self.example = example
        self.spare: nn.Module | None = None

    def unpruned(self) -> nn.Module:
        """The analysed model as it was analysed (do not modify it)."""
        return self.analysis.graph.model if self.spare is None else self.spare

    def take(self) -> tuple[nn.Module, tp.DependencyGraph]:
        if self.spare is None:
            self.spare = copy.deepcopy(self.analysis.graph.model)
            model = self.analysis.graph.model
            for p in model.parameters():  # gradients a signal left: deep copies drop them, so does this one
                p.grad = None
            return model, self.analysis.graph
        model = copy.deepcopy(self.spare)
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=self.example, customized_pruners=CUSTOM_PRUNERS
        )
        return model, graph


def _plan_and_apply(
    copies: _Copies,
    scores: dict[int, np.ndarray],
    spec: PruneSpec,
    kind: str,
    goal: float,
    base_total: float,
    run: _Run,
    ctx: ScoringContext,
) -> tuple[nn.Module, dict[str, np.ndarray], float]:
    """Search a plan, apply it to a copy, measure; tighten the goal until the measurement fits.
    `goal` is a fraction of `base_total`, the original's measure of `kind`. Returns the pruned copy, per
    layer which of its output channels it kept, and the copy's measure of `kind`.
    Each attempt costs one measured forward pass; the analysed model's own MACs come from the analysis."""
    analysis, example = copies.analysis, copies.example
    current = analysis.macs if kind == "macs" else _measure(copies.unpruned(), example, kind)
    extra = 0.0
    if kind == "macs":
        extra = max(current - sum(c.macs for c in analysis.layers.values()), 0.0)
    planner = Planner(
        analysis, scores, kind=kind, round_to=spec.round_to, layer_floor=spec.layer_floor, extra_macs=extra,
        forced=ctx.forced,
    )
    # the planner speaks in fractions of the current model; the goal is a fraction of the original
    local_goal = goal * base_total / current if kind != "channels" else goal
    best: tuple[nn.Module, dict[str, np.ndarray], float] | None = None
    aim = local_goal
    for _attempt in range(8):
        run.check()
        plan = planner.search(aim, spec.scope)
        candidate = _apply(copies, plan.removed, ctx)
        try:
            candidate_total = _measure(candidate[0], example, kind)
        except RuntimeError as e:
            if limits.out_of_memory(e):
                raise
            raise _breaks_at(candidate[0], example, e) from None
        measured = candidate_total / (base_total if kind != "channels" else current)
        if measured <= goal + 1e-9:
            best = (*candidate, candidate_total)
            if measured >= goal * 0.98 or plan.estimate <= 0:
                break
            aim = aim * min(goal / max(measured, 1e-9), 1.05)
        else:
            aim = aim * goal / measured * 0.999
    if best is None:
        raise TargetUnreachable(
            f"target {kind}={goal:.3f} cannot be reached: even the smallest plan allowed by "
            f"layer_floor={spec.layer_floor} and the protected layers keeps more"
        )
    return best


def _latency_plan(
    copies: _Copies, scores: dict[int, np.ndarray], spec: PruneSpec, run: _Run, ctx: ScoringContext,
    loaded: LoadedModel, before_onnx: bytes, base_total: float, state: dict[str, Any],
) -> tuple[nn.Module, dict[str, np.ndarray], float]:
    """Meet a latency budget measured, not predicted: export candidate plans and time them in ONNX
    Runtime against the original (same batch and threads, interleaved), searching the MACs budget
    until the candidate is at or under the target and not far under it (>= 90%)."""
    target = float(state["target_ms"])
    m, example = spec.measure, copies.example
    lo, hi = 0.0, 1.0  # MACs fractions known too small (meets with room) / too large (misses)
    frac = min(1.0, target / float(state["original_ms"]))
    best: tuple[tuple[nn.Module, dict[str, np.ndarray], float], float, float] | None = None
    tried = []
    for _ in range(8):
        run.check()
        candidate = _plan_and_apply(copies, scores, spec, "macs", frac, base_total, run, ctx)
        data = _export(copy.deepcopy(candidate[0]).cpu().eval(), inputs.to(example, "cpu"), loaded, spec)[1]
        orig_ms, cand_ms = onnx_tools.latency(before_onnx, data, loaded.inputs,
                                              batch=_fixed_batch(loaded, spec) or m.batch,
                                              threads=m.threads, repeats=m.repeats)
        # Scale by the original's drift since the first measurement, so the budget means the same.
        cand_ms = cand_ms * float(state["original_ms"]) / orig_ms
        tried.append({"macs_fraction": round(frac, 4), "latency_ms": round(cand_ms, 4)})
        run.tell("plan", 0.3, f"macs {frac:.3f} runs in {cand_ms:.2f} ms (target {target:.2f})",
                 latency_ms=cand_ms, macs_fraction=frac)
        if cand_ms <= target:
            if best is None or cand_ms > best[1]:
                best = (candidate, cand_ms, frac)
            if cand_ms >= 0.9 * target:
                break
            lo = frac
        else:
            hi = frac
        # secant step on latency ~ proportional to MACs, kept inside the bracket
        guess = frac * target / max(cand_ms, 1e-9)
        frac = guess if lo < guess < hi else (lo + hi) / 2
        if hi - lo < 0.005:
            break
    state["tried"] = tried
    if best is None:
        raise TargetUnreachable(
            f"latency target {target:.3f} ms cannot be reached: the smallest plan tried ran in "
            f"{min(t['latency_ms'] for t in tried):.3f} ms (original {state['original_ms']:.3f} ms)"
        )
    state["macs_fraction"] = round(best[2], 4)
    state["latency_ms"] = round(best[1], 4)
    return best[0]


def _apply(
    copies: _Copies, removed: dict[int, np.ndarray], ctx: ScoringContext
) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Apply a plan to an unpruned copy of the analysed model (one stays intact for the next attempt):
    fold what the signal asked into the surviving weights, then remove the channels."""
    analysis = copies.analysis
    model, graph = copies.take()
    modules = dict(model.named_modules())
    _fold(analysis, removed, modules, ctx)
    kept = {name: np.arange(c) for name, c in _channels(model).items()}
    for g, idxs in removed.items():
        for t in analysis.groups[g].touches:
            if t.is_out and t.layer in kept:
                gone = t.idxs[np.isin(t.root_idxs, idxs)]
                kept[t.layer] = np.setdiff1d(kept[t.layer], gone)
    for g, idxs in removed.items():
        info = analysis.groups[g]
        handler = info.group[0].dep.handler
        group = graph.get_pruning_group(modules[info.root], handler, [int(i) for i in idxs])
        if graph.check_pruning_group(group):
            group.prune()
    _drop_zero_routes(model, graph)
    return model, kept


@torch.no_grad()
def _fold(analysis: Analysis, removed: dict[int, np.ndarray], modules: dict[str, nn.Module], ctx: ScoringContext) -> None:
    """Before a channel goes, move what it carried into its consumers: a constant into their bias (dead
    units), a near-copy of a kept channel into that channel's weights (similarity)."""
    for g, idxs in removed.items():
        merges = ctx.merges.get(g, {})
        for t in analysis.groups[g].touches:
            if t.is_out:
                continue
            m = modules.get(t.layer)
            if not isinstance(m, (nn.Conv2d, nn.Linear)) or getattr(m, "groups", 1) != 1:
                continue
            local_of = {int(r): int(loc) for loc, r in zip(t.idxs, t.root_idxs, strict=True) if r >= 0}
            folds = ctx.folds.get(t.layer, {})
            for j in idxs:
                loc = local_of.get(int(j))
                if loc is None:
                    continue
                w_j = m.weight[:, loc]
                beta = folds.get(loc, (None, 0.0, 0.0))[2]
                if int(j) in merges:
                    keep, alpha, beta = merges[int(j)]
                    k_loc = local_of.get(keep)
                    if k_loc is None:
                        continue
                    m.weight[:, k_loc] += alpha * w_j
                if beta:
                    shift = beta * w_j.reshape(w_j.shape[0], -1).sum(1)
                    if m.bias is None:
                        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device))
                    m.bias += shift


def _drop_zero_routes(model: nn.Module, graph: object) -> None:
    """Outputs of derived channel routes whose source was pruned carry zeros: remove them too, which
    is exact, and repeat, since removing them can zero the routes downstream."""
    for _ in range(1000):
        for m in model.modules():
            if isinstance(m, ChannelSelect) and m.derived and bool((m.src < 0).any()):
                idxs = [int(i) for i in torch.nonzero(m.src < 0).flatten()]
                pruner = graph.get_pruner_of_module(m)  # type: ignore[attr-defined]
                group = graph.get_pruning_group(m, pruner.prune_out_channels, idxs)  # type: ignore[attr-defined]
                group.prune()
                break
        else:
            return


def _breaks_at(model: nn.Module, example: Example, error: RuntimeError) -> UnsupportedModelError:
    """A pruned copy that no longer runs: the dependency graph mis-maps this model's channels somewhere (a
    coupling it does not see, a reshape it maps wrongly). That is the engine's limit, said naming the layer where
    the shapes stop fitting (found by running it again, hooked), not an internal error."""
    entered: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, _args: entered.append(names.get(mod, "?")))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(*as_tuple(example))
    except RuntimeError:
        pass
    finally:
        for h in hooks:
            h.remove()
    where = entered[-1] if entered else "?"
    return UnsupportedModelError(
        f"pruning breaks this model at {where!r} ({' '.join(str(error).split())[:160]}): the dependency graph "
        "does not map its channels there; protect the layers that feed it (--protect)")


def _measure(model: nn.Module, example: Example, kind: str) -> float:
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if kind == "channels":
        return float(sum(c for c in _channels(model).values()))
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*as_tuple(example))
    return counter.get_total_flops() / 2


def _channels(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, COUNTED):
            out[name] = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    return out


def _layer_table(before: dict[str, int], after: dict[str, int],
                 origin: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per layer: channel counts, and `cut`, which of the original channels went (a hex bitmask, channel 0
    the first digit's high bit), so that two signals' choices on one model can be compared channel by channel."""
    return [{"name": n, "channels_before": c, "channels_after": after.get(n, 0), "cut": _cut_mask(c, origin.get(n))}
            for n, c in before.items()]


def _cut_mask(channels: int, kept: np.ndarray | None) -> str:
    bits = np.ones(channels, dtype=np.uint8)
    if kept is not None:
        bits[np.asarray(kept, dtype=np.int64)] = 0
    bits = np.concatenate([bits, np.zeros(-channels % 4, dtype=np.uint8)]).reshape(-1, 4)
    return "".join("0123456789abcdef"[int(v)] for v in bits @ np.array([8, 4, 2, 1]))


def _export(net: nn.Module, example: Example, loaded: LoadedModel, spec: PruneSpec) -> tuple[bytes, bytes]:
    """The pruned module's ONNX, and the model to hand out: the same, or joined with the frozen nodes (exported
    at the opset the frozen nodes were written for)."""
    opset = loaded.part_opset if loaded.frozen is not None and loaded.part_opset else max(spec.export.opset,
                                                                                          loaded.opset)
    part = onnx_tools.export(net, example, input_name=[i.name for i in loaded.inputs], output_names=loaded.output_names,
                             dynamic_axes=_dynamic_axes(loaded, spec), opset=opset)
    if loaded.frozen is None:
        return part, part
    try:
        return part, frozen.join(part, loaded.frozen)
    except Exception as e:
        raise PruningError(f"the pruned part cannot be joined with the frozen nodes: {type(e).__name__}: "
                           f"{str(e)[:200]}") from None


def _dynamic_axes(loaded: LoadedModel, spec: PruneSpec) -> dict[str, dict[int, str]]:
    axes = {k: dict(v) for k, v in loaded.dynamic_axes.items()}
    names = [*(i.name for i in loaded.inputs), *loaded.output_names]
    if spec.export.dynamic_batch:
        for name in names:
            axes.setdefault(name, {}).setdefault(0, "batch")
    elif spec.export.dynamic_batch is False:
        for name in names:
            axes.get(name, {}).pop(0, None)
    return {k: v for k, v in axes.items() if v}


def _fixed_batch(loaded: LoadedModel, spec: PruneSpec) -> int | None:
    """The batch size both the sent and the returned model take, when it is fixed in either."""
    if spec.export.dynamic_batch is False:
        return loaded.input_shape[0]
    return loaded.fixed_batch


def _check_data_fits(loaded: LoadedModel, data: Dataset | None, what: str) -> Dataset | None:
    """`data` matched to the model's inputs (Dataset.bind), each array of the per-sample shape its input takes."""
    if data is None:
        return None
    graph_inputs = loaded.inputs
    data = data.bind([i.name for i in graph_inputs], [np.dtype(i.dtype) for i in graph_inputs])
    for i, (key, values) in enumerate(zip(data.names, data.arrays(), strict=True)):
        want = list(graph_inputs[i].shape[1:])
        got = list(values.shape[1:])
        if got != want:
            key = "x" if len(graph_inputs) == 1 else key
            raise BadDataError(
                f"{what} data {key} has per-sample shape {got}, but the model takes {want} "
                "(give inputs exactly as the model takes them, e.g. NCHW float32, normalised)"
            )
    return data


def _probe_inputs(loaded: LoadedModel, data: Dataset | None) -> list[np.ndarray]:
    """Inputs to check the model on: the first samples of `data`, or random ones (data-free)."""
    n = loaded.fixed_batch or 4
    if data is not None and len(data) >= n:
        return list(data.arrays(slice(None, n)))
    return inputs.arrays(loaded.inputs, n, seed=0)


def _second_shapes(graph_inputs: list[GraphInput]) -> list[GraphInput] | None:
    """The inputs at a second size, when any has symbolic dimensions (loading.second_shape)."""
    if not any(i.symbolic for i in graph_inputs):
        return None
    return [GraphInput(i.name, second_shape(i.shape, i.symbolic) or i.shape, i.dtype) for i in graph_inputs]


def _output_kinds(before: bytes, loaded: LoadedModel, spec: PruneSpec,
                  x: list[np.ndarray]) -> list[fidelity.OutputKind]:
    """What each output of the original is (fidelity.py), read from its graph and its outputs on `x`; the spec's
    fidelity.metric, when not auto, forces one kind on every output that can have it."""
    proto = onnx.load_model_from_string(before)
    first = onnx_tools.run_outputs(onnx_tools.session(before, 2), *x)
    batch_name = loaded.dynamic_axes.get(loaded.input_name, {}).get(0)
    axes = []
    for o, v in zip(proto.graph.output, first, strict=True):
        names = [dim.dim_param for dim in o.type.tensor_type.shape.dim]
        if batch_name and batch_name in names:
            axes.append(names.index(batch_name))
        else:  # a fixed batch: the first axis of its size ([T, 1, C] from a batch-1 recognizer: axis 1)
            axes.append(next((i for i, d in enumerate(v.shape) if d == x[0].shape[0]), 0))

    def shapes_of(names: list[str]) -> list[tuple[int, ...]]:
        return [tuple(v.shape) for v in onnx_tools.intermediates(proto, names, x)]

    kinds = fidelity.infer_kinds(proto, [tuple(v.shape) for v in first], axes, shapes_of)
    if spec.fidelity.metric != "auto":
        forced = {"top1_agreement": "classes", "iou": "map", "miou": "segmentation", "exact_match": "sequence",
                  "map50": "detection", "cosine": "values"}[spec.fidelity.metric]
        rank = {"classes": 2, "map": 4, "segmentation": 4, "sequence": 3}.get(forced)
        for k, v in zip(kinds, first, strict=True):
            if (rank is not None and v.ndim != rank) or (forced == "detection" and k.classes is None):
                raise SpecError(f"fidelity.metric {spec.fidelity.metric!r} does not fit output {k.name!r} of shape "
                                f"{list(v.shape)}; use auto")
        kinds = [fidelity.OutputKind(k.name, forced, k.activation, k.batch_axis, k.classes) for k in kinds]
    return kinds


def _fidelity(before: bytes, after: bytes, kinds: list[fidelity.OutputKind], spec: PruneSpec, data: Dataset | None,
              source: str, fixed_batch: int | None, unmeasured: str) -> dict[str, Any]:
    """Every output of the pruned model against the original's, in the terms of its kind (fidelity.py)."""
    if data is None:
        return {"measured": False, "reason": unmeasured, "max_drop": spec.fidelity.max_drop}
    d = data.head(spec.evaluation.samples)
    step = fixed_batch or 64
    if fixed_batch:  # a model with a fixed batch takes whole batches only
        d = d.head(len(d) // fixed_batch * fixed_batch)
    if not len(d):
        return {"measured": False, "reason": f"fewer samples than the model's fixed batch of {fixed_batch}",
                "max_drop": spec.fidelity.max_drop}
    sessions = [onnx_tools.session(before, 2), onnx_tools.session(after, 2)]
    outs: list[list[list[np.ndarray]]] = [[], []]
    for start in range(0, len(d), step):
        chunk = d.arrays(slice(start, start + step))
        for i, sess in enumerate(sessions):
            outs[i].append(onnx_tools.run_outputs(sess, *chunk, names=d.names))
    results = []
    for i, kind in enumerate(kinds):
        b = np.concatenate([chunk[i] for chunk in outs[0]], axis=kind.batch_axis)
        a = np.concatenate([chunk[i] for chunk in outs[1]], axis=kind.batch_axis)
        results.append(fidelity.compare(kind, b, a, d.y))
    report: dict[str, Any] = {"measured": True, "data": source, "samples": len(d), "outputs": results,
                              "max_drop": spec.fidelity.max_drop}
    if spec.fidelity.max_drop is not None:
        report["held"] = all(r["drop_points"] <= spec.fidelity.max_drop + 1e-9 for r in results)
    return report


def _legacy_fidelity(f: dict[str, Any], source: str) -> dict[str, Any]:
    """The first class-scores output's figures under the report's older keys (the dashboard and the examples
    read them)."""
    if not f.get("measured"):
        return {}
    classes = next((o for o in f["outputs"] if o["kind"] == "classes"), None)
    if classes is None:
        return {"evaluated_samples": f["samples"], "evaluated_on": source}
    out = {"agreement": classes["value"], "evaluated_samples": f["samples"], "evaluated_on": source}
    out.update({k: classes[k] for k in ("accuracy_before", "accuracy_after") if k in classes})
    return out
