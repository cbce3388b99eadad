"""Every signal x every recovery at a few MACs targets, for one model: shared by bench/recovery_table.py
(ResNet-56 / CIFAR-10) and bench/fashion_mnist.py (a network trained here).

Each (signal, target) is scored and pruned once, by `secateurs.pruning.prune` with recovery `none`; each
recovery then runs on a copy of that pruned model through the engine's own recovery stage
(`pipeline._recover`, the code a job with that `recovery.method` runs), with the kept channels read back
from the report's `cut` bitmasks. The recovered copy is exported and checked by the engine's ONNX tools;
top-1 is that of the exported ONNX in ONNX Runtime. Cells are appended to a JSON file as they finish, so
a cut run keeps what it measured and `--resume` skips what is done.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

RECOVERIES = ("none", "bn_recalibrate", "reconstruct", "distill")


def registered_signals() -> list[str]:
    """Every signal the engine implements, in the catalogue's order (GET /v1/signals)."""
    from secateurs.pruning.catalog import SIGNALS
    from secateurs.pruning.signals import REGISTRY

    return [name for name in SIGNALS if name in REGISTRY]


def signal_label(signal: str | dict) -> str:
    """A registry name, or `compose:` and the composed signal's non-default axes, short enough for a table."""
    if isinstance(signal, str):
        return signal
    axes = signal["compose"]
    parts = [f"{axes['measure']}/{axes['reduce']}", *(f"{k}={axes[k]}" for k in ("aggregate", "normalize", "coupling")
                                                      if k in axes)]
    return "compose: " + ", ".join(parts) + (", per_mac" if axes.get("per_mac") else "")


def parse_signal(text: str) -> str | dict:
    """A registry name, or a JSON compose object: '{"compose": {...}}'."""
    text = text.strip()
    return json.loads(text) if text.startswith("{") else text


def kept_from_report(report: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per layer, the original output channels the pruned model kept, decoded from the report's `cut`
    bitmask (hex, channel 0 the first digit's high bit, 1 = cut)."""
    kept = {}
    for layer in report["layers"]:
        digits = np.array([int(c, 16) for c in layer["cut"]], dtype=np.uint8)
        bits = ((digits[:, None] >> np.array([3, 2, 1, 0])) & 1).reshape(-1)[: layer["channels_before"]]
        kept[layer["name"]] = np.flatnonzero(bits == 0)
        assert len(kept[layer["name"]]) == layer["channels_after"], layer["name"]
    return kept


def onnx_accuracy(data: bytes, test, threads: int, batch: int = 500) -> float:  # type: ignore[no-untyped-def]
    from secateurs.pruning import onnx_tools

    sess = onnx_tools.session(data, threads)
    correct = 0
    for s in range(0, len(test), batch):
        correct += int((onnx_tools.run(sess, test.x[s : s + batch]).argmax(1) == test.y[s : s + batch]).sum())
    return correct / len(test)


def recover_copy(pruned: torch.nn.Module, original: torch.nn.Module, kept: dict[str, np.ndarray], calib,
                 spec, method: str, loaded) -> tuple[bytes, dict[str, Any], float]:  # type: ignore[no-untyped-def]
    """Run the engine's recovery stage with `method` on a copy of the pruned model, export and verify
    it as a job would; returns the ONNX, the recovery's report and the seconds it took."""
    from secateurs.pruning import onnx_tools, pipeline

    t0 = time.monotonic()
    net = copy.deepcopy(pruned)
    rspec = spec.model_copy(update={"recovery": spec.recovery.model_copy(update={"method": method})})
    torch.manual_seed(0)
    info = pipeline._recover(net, original, kept, calib, rspec, torch.device("cpu"), pipeline._Run(None, None, rspec), {})
    net = net.cpu().eval()
    example = torch.zeros(loaded.input_shape)
    data = onnx_tools.export(net, example, input_name=loaded.input_name, output_names=loaded.output_names,
                             dynamic_axes=pipeline._dynamic_axes(loaded, rspec),
                             opset=max(rspec.export.opset, loaded.opset))
    onnx_tools.verify(data, net, calib.x[:4], None)
    return data, info, time.monotonic() - t0


class Results:
    """The JSON file of finished cells, rewritten after each one."""

    def __init__(self, path: Path, resume: bool, meta: dict[str, Any]) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.meta = meta
        self.saved_meta: dict[str, Any] = {}
        if resume and path.exists():
            saved = json.loads(path.read_text())
            self.rows = saved["rows"]
            self.saved_meta = saved.get("meta", {})
            for r in self.rows:  # cells from before rows named their machine: the file's machine then
                r.setdefault("machine", self.saved_meta.get("machine"))
            self.meta = {**self.saved_meta, **meta}

    def done(self, signal: str, target: float, recovery: str) -> dict[str, Any] | None:
        for r in self.rows:
            if r["signal"] == signal and r["target"] == target and r["recovery"] == recovery:
                return r
        return None

    def add(self, row: dict[str, Any]) -> None:
        row = {**row, "machine": row.get("machine", self.meta.get("machine"))}
        self.rows = [r for r in self.rows if (r["signal"], r["target"], r["recovery"]) !=
                     (row["signal"], row["target"], row["recovery"])]
        self.rows.append(row)
        self.save()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("recovery_info", "signal_report", "machine")}), flush=True)

    def save(self) -> None:
        """Merge into the file under a lock: several runs (say, one per recovery) may fill one file; the
        cells on disk that this run does not hold are kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                disk = json.loads(self.path.read_text())
                mine = {(r["signal"], r["target"], r["recovery"]) for r in self.rows}
                self.rows += [r for r in disk["rows"] if (r["signal"], r["target"], r["recovery"]) not in mine]
                old = disk.get("meta", {})
                merged = {**old, **self.meta}
                merged["commands"] = sorted(set(old.get("commands", [])) | set(self.meta.get("commands", [])))
                for key, pick in (("started", min), ("finished", max)):
                    have = [m[key] for m in (old, self.meta) if key in m]
                    if have:
                        merged[key] = pick(have)
                self.meta = merged
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))
            tmp.replace(self.path)


def run_arguments(parser: argparse.ArgumentParser, fresh_help: str) -> None:
    """The three ways a cell script treats the cells already on disk: `--resume` keeps them, `--fresh`
    discards them, `--run ID` (what `make bench` passes) chooses between the two by `belongs_to`."""
    parser.add_argument("--resume", action="store_true", help="keep the cells already measured, run the rest")
    parser.add_argument("--fresh", action="store_true", help=fresh_help)
    parser.add_argument("--run", help="the `make bench` run the cells belong to: results files of that run are "
                                      "filled in (as --resume), any other started anew (as --fresh)")


def settle_run(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path) -> None:
    """Check the arguments `run_arguments` added and, given `--run`, set `resume` and `fresh` by whether
    the results file at `path` belongs to that run."""
    if args.fresh and args.resume:
        parser.error("--fresh and --resume exclude each other")
    if args.run:
        if args.fresh or args.resume:
            parser.error("--run chooses between --fresh and --resume itself")
        args.resume = belongs_to(path, args.run)
        args.fresh = not args.resume


def belongs_to(path: Path, run: str) -> bool:
    """Whether the results file at `path` holds the cells of `run` (one `make bench` run): a script given
    `--run` fills such a file in and starts any other anew, so an attempt cut anywhere, even before its
    first save, is followed by one that does the right thing."""
    try:
        meta = json.loads(path.read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(meta, dict) and meta.get("run") == run


def run_grid(*, model: bytes, arch: str | None, calib, test, signals: list[str | dict], targets: list[float],
             recoveries: list[str], base_spec: dict[str, Any], results: Results, threads: int,
             stop_at: float | None = None, log: Callable[[str], None] = print) -> None:  # type: ignore[no-untyped-def]
    """Fill `results` with every (signal, target, recovery) cell not already in it. `stop_at`: a
    time.time() after which no new (signal, target) is started."""
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.loading import load_model

    loaded = load_model(model, arch=arch)
    original = loaded.module.eval()
    for target in targets:
        for signal in signals:
            label = signal_label(signal)
            todo = [r for r in recoveries if results.done(label, target, r) is None]
            if not todo:
                continue
            if stop_at is not None and time.time() > stop_at:
                log(f"out of time: {label} at macs {target} not started ({', '.join(todo)})")
                continue
            spec = PruneSpec.model_validate({**base_spec, "signal": signal, "target": {"macs": target},
                                             "recovery": {**base_spec.get("recovery", {}), "method": "none"}})
            t0, c0 = time.monotonic(), time.process_time()
            try:
                result = prune(model, spec, arch=arch, calibration=calib)
            except Exception as e:  # a signal that fails is a result too: say so in the table
                for rec in todo:
                    results.add({"signal": label, "target": target, "recovery": rec, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            prune_seconds, prune_cpu = time.monotonic() - t0, time.process_time() - c0
            report = result.report
            kept = kept_from_report(report)
            signal_report = {k: report[k] for k in ("bandit", "dead_channels", "similar_channels", "recovery")
                             if k in report}
            common = {"signal": label, "target": target, "macs_kept": report["macs_kept"],
                      "params_kept": report["params_kept"], "prune_minutes": prune_seconds / 60,
                      "stage_seconds": report["stage_seconds"], "signal_report": signal_report}
            for rec in todo:
                c1 = time.process_time()
                if rec == "none":
                    data, info, seconds = result.onnx, report.get("recovery", {}), 0.0
                else:
                    data, info, seconds = recover_copy(result.model, original, kept, calib, spec, rec, loaded)
                # CPU minutes of this process (all its threads): the cost on a machine shared with other work
                cpu = prune_cpu + time.process_time() - c1
                results.add({**common, "recovery": rec, "accuracy": onnx_accuracy(data, test, threads),
                             "recover_minutes": seconds / 60, "minutes": (prune_seconds + seconds) / 60,
                             "cpu_minutes": cpu / 60, "recovery_info": info})


# ------------------------------------------------------------------------------------------ writing it up


def shared_note(load_start: str, load_end: str) -> str:
    """Wall-clock minutes overstate the cost when other work had the cores: say so when the load said so."""
    loads = [float(v) for v in (load_start, load_end) if str(v).replace(".", "", 1).isdigit()]
    if max(loads, default=0.0) > (os.cpu_count() or 1) + 0.5:
        return ("Minutes are wall-clock; the cores were shared with other work (load above the core count), so "
                "they overstate the cost on a quiet machine.")
    return "Minutes are wall-clock."


def machines(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The machine(s) the cells were measured on: cells filled in several sessions may come from different
    machines, whose minutes do not compare (accuracy does not depend on the machine)."""
    counts: dict[str, int] = {}
    for r in rows:
        m = r.get("machine") or meta.get("machine") or "?"
        counts[m] = counts.get(m, 0) + 1
    if len(counts) <= 1:
        return f"Machine: {next(iter(counts), meta.get('machine', '?'))}"
    return "Machines (minutes compare only within one): " + "; ".join(
        f"{m} ({n} cells)" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def table(rows: list[dict[str, Any]], signals: list[str], targets: list[float], recoveries: list[str],
          unpruned: float) -> list[str]:
    """One row per (signal, target): top-1 and minutes per recovery; `-` where a cell is missing."""
    by = {(r["signal"], r["target"], r["recovery"]): r for r in rows}
    head = "| signal | target | MACs kept | " + " | ".join(f"{r}: top-1 (min)" for r in recoveries) + " |"
    lines = [head, "| --- | ---: | ---: | " + " | ".join("---:" for _ in recoveries) + " |"]
    for target in targets:
        best = max((r["accuracy"] for r in rows if r["target"] == target and "accuracy" in r), default=None)
        for s in signals:
            cells, kept = [], None
            for rec in recoveries:
                r = by.get((s, target, rec))
                if r is None:
                    cells.append("not run")
                elif "error" in r:
                    cells.append("failed")
                else:
                    kept = r["macs_kept"]
                    acc = f"{r['accuracy'] * 100:.2f}%"
                    acc = f"**{acc}**" if r["accuracy"] == best else acc
                    cells.append(f"{acc} ({r['minutes']:.1f})")
            lines.append(f"| {s} | {target:g} | {'-' if kept is None else f'{kept:.3f}'} | " + " | ".join(cells) + " |")
    lines += ["", f"Unpruned: {unpruned * 100:.2f}%. Bold: the best cell at each target."]
    return lines


def missing(rows: list[dict[str, Any]], signals: list[str], targets: list[float], recoveries: list[str]) -> list[str]:
    """What the table lacks: how many cells were not measured, and each cell that failed with its error."""
    have = {(r["signal"], r["target"], r["recovery"]) for r in rows}
    total = len(signals) * len(targets) * len(recoveries)
    gone = sum((s, t, rec) not in have for s in signals for t in targets for rec in recoveries)
    out = [f"{gone} of {total} cells were not measured (marked `not run` in the table)"] if gone else []
    return out + [f"{r['signal']} at macs {r['target']:g} ({r['recovery']}) failed: {r['error']}"
                  for r in rows if "error" in r]


def best_cells(rows: list[dict[str, Any]], targets: list[float]) -> list[str]:
    out = []
    for t in targets:
        ok = [r for r in rows if r["target"] == t and "accuracy" in r]
        if ok:
            b = max(ok, key=lambda r: r["accuracy"])
            out.append(f"macs {t:g}: {b['signal']} + {b['recovery']}, {b['accuracy'] * 100:.2f}% "
                       f"(MACs kept {b['macs_kept']:.3f}, {b['minutes']:.1f} min)")
    return out


def plot(rows: list[dict[str, Any]], signals: list[str], recoveries: list[str], unpruned: float, path: Path,
         title: str) -> None:
    """Top-1 against MACs kept, one panel per recovery, one line per signal (through the unpruned model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10").colors
    markers = "osD^v<>pPX*hH8d"
    cols = 2 if len(recoveries) > 2 else len(recoveries)
    rows_n = -(-len(recoveries) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.4 * cols, 4.8 * rows_n + 1.4), sharey=True, squeeze=False)
    flat = list(axes.flat)
    shown: dict[str, object] = {}
    for ax, rec in zip(flat, recoveries, strict=False):
        for i, s in enumerate(signals):
            pts = sorted((r["macs_kept"], r["accuracy"] * 100) for r in rows
                         if r["signal"] == s and r["recovery"] == rec and "accuracy" in r)
            if not pts:
                continue
            pts.append((1.0, unpruned * 100))
            xs, ys = zip(*pts, strict=True)
            (line,) = ax.plot(xs, ys, marker=markers[i % len(markers)], color=colours[i % 10],
                              ls="-" if i < 10 else "--", label=s, lw=1.4, ms=6)
            shown.setdefault(s, line)
        (star,) = ax.plot([1.0], [unpruned * 100], marker="*", color="black", ms=13, ls="none", label="unpruned")
        shown.setdefault("unpruned", star)
        ax.set_title(f"recovery: {rec}")
        ax.set_xlabel("MACs kept (fraction of the original)")
        ax.set_ylabel("top-1 on the test set (%)")
        ax.grid(alpha=0.3)
        ax.set_xlim(0.45, 1.03)
    for ax in flat[len(recoveries):]:
        ax.set_visible(False)
    fig.legend(list(shown.values()), list(shown.keys()), loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(title + "\n(pruned ONNX in ONNX Runtime; each line ends at the unpruned model)")
    legend_rows = -(-len(shown) // 4)
    fig.tight_layout(rect=(0, 0.03 + 0.022 * legend_rows, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
