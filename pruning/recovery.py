"""Recovery: win back what pruning cost, from calibration data, without (or with) labels.

- `bn_recalibrate`: re-estimate BatchNorm statistics on the pruned network's own feature maps;
- `reconstruct`: least-squares refit of every layer, in order, so that its output on calibration data
  matches the original layer's output on the kept channels (closed form);
- `distill`: label-free knowledge distillation from the original model on the calibration inputs;
- `finetune`: supervised fine-tuning with the calibration labels.
The same code runs on CUDA or CPU: the device is chosen once by the caller. Training (`distill`,
`finetune`) runs its arithmetic in bfloat16 under autocast where the hardware has it natively (`precision`,
"auto" by default); the weights, the optimizer and the exported model stay float32.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .errors import SpecError

Tick = Callable[[float, str, dict[str, float]], None]  # fraction, message, metrics; may raise Cancelled


def _batches(data: Dataset, n: int, batch_size: int, device: torch.device | str, shuffle: bool = False,
             generator: torch.Generator | None = None):  # type: ignore[no-untyped-def]
    idx = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        sel = idx[start : start + batch_size].numpy()
        x = torch.from_numpy(data.x[sel]).to(device)
        y = None if data.y is None else torch.from_numpy(data.y[sel]).to(device)
        yield x, y


def _logits(out: object) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out.reshape(out.shape[0], -1)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def bn_recalibrate(model: nn.Module, data: Dataset, *, samples: int, batch_size: int = 64,
                   device: torch.device | str = "cpu") -> bool:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the whole calibration pass
    model.eval()
    for m in bns:
        m.train()
    for x, _ in _batches(data, min(samples, len(data)), batch_size, device):
        model(x)
    for m, (momentum, _) in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()
    return True


class _Stop(Exception):
    pass


class _Positions:
    """The positions sampled from one layer's feature maps, per batch: drawn once, so that the pruned
    layer's input rows and the original layer's output rows are read at the same places."""

    def __init__(self, per_image: int, seed: int) -> None:
        self.per_image = per_image
        self.gen = torch.Generator().manual_seed(seed)
        self.chosen: dict[int, torch.Tensor] = {}

    def pick(self, offset: int, batch: int, count: int) -> torch.Tensor:
        if offset not in self.chosen:
            self.chosen[offset] = torch.randint(count, (batch, self.per_image), generator=self.gen)
        return self.chosen[offset]


def _sampled(flat: torch.Tensor, where: _Positions, offset: int) -> torch.Tensor:
    """Rows [N * per_image, C] of `flat` [N, L, C] at the sampled positions along L."""
    p = where.pick(offset, flat.shape[0], flat.shape[1]).to(flat.device)
    return flat.gather(1, p[:, :, None].expand(-1, -1, flat.shape[2])).reshape(-1, flat.shape[2]).double().cpu()


def _input_rows(m: nn.Module, x: torch.Tensor, where: _Positions, offset: int) -> torch.Tensor:
    """A layer's input patches (conv: unfolded receptive fields) at the sampled output positions."""
    if isinstance(m, nn.Conv2d):
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, Cin*k*k, L]
        return _sampled(cols.transpose(1, 2), where, offset)
    return _sampled(x.reshape(x.shape[0], -1, x.shape[-1]), where, offset)


def _output_rows(m: nn.Module, y: torch.Tensor, where: _Positions, offset: int) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return _sampled(y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2), where, offset)
    return _sampled(y.reshape(y.shape[0], -1, y.shape[-1]), where, offset)


def _capture(model: nn.Module, layers: dict[str, _Positions], data: Dataset, n: int, device: torch.device | str,
             want: str) -> dict[str, torch.Tensor]:
    """Rows of the named layers' input patches (`want="input"`) or outputs (`"output"`) at their sampled
    positions, in one pass over the data; each batch's pass stops once every named layer has been seen."""
    modules = dict(model.named_modules())
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    state: dict[str, Any] = {"offset": 0, "seen": set()}

    def seen(name: str) -> None:
        state["seen"].add(name)
        if len(state["seen"]) == len(layers):
            raise _Stop  # the rest of the network is not needed for this batch

    def hook(name: str):  # type: ignore[no-untyped-def]
        def pre(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if name not in state["seen"]:  # a module called twice: its first call
                rows[name].append(_input_rows(m, inputs[0].detach(), layers[name], state["offset"]))
                seen(name)

        def post(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if name not in state["seen"]:
                rows[name].append(_output_rows(m, out.detach(), layers[name], state["offset"]))
                seen(name)

        return pre if want == "input" else post

    handles = [
        modules[name].register_forward_pre_hook(hook(name)) if want == "input"
        else modules[name].register_forward_hook(hook(name))
        for name in layers
    ]
    try:
        with torch.no_grad():
            for x, _ in _batches(data, n, 64, device):
                state["seen"] = set()
                try:
                    model(x)
                except _Stop:
                    pass
                state["offset"] += 1
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(r) for name, r in rows.items()}


def reconstruct(model: nn.Module, original: nn.Module, origin: dict[str, np.ndarray], data: Dataset, *,
                samples: int, device: torch.device | str = "cpu", tick: Tick | None = None,
                ridge: float = 1e-3) -> int:
    """Refit each conv (groups=1) and linear layer whose inputs changed, in execution order, so that on
    calibration data its output equals the original layer's output on the channels it kept.
    The original's outputs at every such layer come from one pass over the data; the pruned model's
    inputs to a layer take a pass per layer (up to that layer), as they change while earlier layers are refit."""
    model.eval()
    original.eval()
    order: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: order.append(n) if n not in order else None))
    with torch.no_grad():
        model(torch.from_numpy(data.x[:1]).to(device))
    for h in hooks:
        h.remove()
    pruned_modules = dict(model.named_modules())
    orig_modules = dict(original.named_modules())
    n = min(samples, len(data))
    todo: dict[str, _Positions] = {}
    for i, name in enumerate(order):
        m, o = pruned_modules[name], orig_modules.get(name)
        if o is None or type(o) is not type(m) or getattr(m, "groups", 1) != 1:
            continue
        in_now = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        in_was = o.in_channels if isinstance(o, nn.Conv2d) else o.in_features
        if in_now == in_was:
            continue  # same inputs: nothing to compensate at this layer
        per_image = max(1, math.ceil(min(8192, 2 * m.weight[0].numel() + 256) / n))
        todo[name] = _Positions(per_image, seed=i)
    targets = _capture(original, todo, data, n, device, "output") if todo else {}
    refit = 0
    for name, where in todo.items():
        m = pruned_modules[name]
        features = m.weight[0].numel()
        x = _capture(model, {name: where}, data, n, device, "input")[name]
        y = targets.pop(name)
        kept = origin.get(name)
        if kept is not None:
            y = y[:, torch.from_numpy(kept)]
        if y.shape[1] != m.weight.shape[0]:
            continue
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
        xa = torch.cat([x, ones], 1) if m.bias is not None else x
        gram = xa.T @ xa
        gram += ridge * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
        theta = torch.linalg.solve(gram, xa.T @ y)  # [features(+1), Cout]
        with torch.no_grad():
            w = theta[:features].T.reshape(m.weight.shape)
            m.weight.copy_(w.to(m.weight.dtype))
            if m.bias is not None:
                m.bias.copy_(theta[features].to(m.bias.dtype))
        refit += 1
        if tick is not None:
            tick((order.index(name) + 1) / len(order), f"refit {name}", {"layers_refit": float(refit)})
    return refit


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA device that supports it, or a CPU with
    AVX-512 BF16 or AMX (oneDNN's bf16 kernels; elsewhere bf16 is emulated and slower than float32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(dev):  # the device asked about, not the current one
            try:  # torch's default counts emulation (pre-Ampere GPUs) as support
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # older torch: no emulation argument
                return torch.cuda.get_device_properties(dev).major >= 8
    if dev.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(probe()) for probe in probes if probe is not None)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"auto" becomes "bf16" where `device` has native bfloat16, else "fp32"; an explicit choice stands."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise SpecError(f"recovery.precision must be auto, fp32 or bf16, not {precision!r}")
    return precision


def _autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and 4-pixel crops, each image its own, for image batches (N, C, H, W) of 16
    pixels or more. (One crop offset for a whole batch moves every image alike: 81 variants of the batch
    instead of 81 per image.)"""
    if x.dim() != 4 or min(x.shape[2:]) < 16:
        return x
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [N, 1, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def _mix(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each input blended with another of the batch at its own uniform random ratio (mixup without labels).
    For distillation only: teacher and student see the same blend, so the student matches the teacher's
    function between the calibration images, not only at them (Beyer et al. 2022, "Knowledge distillation:
    A good teacher is patient and consistent")."""
    if x.shape[0] < 2 or not x.is_floating_point():
        return x
    partner = torch.randperm(x.shape[0], generator=generator).to(x.device)
    ratio = torch.rand(x.shape[0], generator=generator).to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return ratio * x + (1 - ratio) * x[partner]


class Teacher:
    """The original model's outputs for distillation. In float32 on the CPU its forward pass runs in ONNX
    Runtime when the export reproduces the module's outputs: ResNet-56 at batch 128 on 2 threads takes 0.29 s
    there against 0.47-0.79 s in eager PyTorch (AMD EPYC with AVX-512: 0.15 s against 0.35 s), and the
    teacher's pass is a quarter of every distillation step. In bf16 the module runs under autocast (0.12 s on
    that EPYC). Elsewhere (CUDA), or when the export or its check fails, the module itself runs."""

    def __init__(self, module: nn.Module, example: torch.Tensor, device: torch.device | str,
                 precision: str = "fp32") -> None:
        self.module = module.eval()
        self.session: Any = None
        self.autocast = lambda: _autocast(precision, device)
        if torch.device(device).type != "cpu" or example.dim() < 2 or precision == "bf16":
            return
        try:
            self.session = self._session(example)
        except Exception:  # noqa: BLE001 - any export or runtime failure: the module runs instead
            self.session = None

    def _session(self, example: torch.Tensor) -> Any:
        from .onnx_tools import export
        from .onnx_tools import session as ort_session

        data = export(self.module, example[:1], input_name="x", output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, opset=17)
        # no spinning: between teacher passes the CPU belongs to PyTorch's backward pass
        session = ort_session(data, threads=max(1, torch.get_num_threads()), spin=False)
        got = session.run(None, {"x": example.numpy()})[0]
        with torch.no_grad():
            ref = _logits(self.module(example)).numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        if not np.allclose(got.reshape(ref.shape), ref, atol=1e-3 * scale):  # a size mismatch raises
            return None
        return session

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            out = self.session.run(None, {"x": x.contiguous().numpy()})[0]
            return torch.from_numpy(out).reshape(x.shape[0], -1)
        with self.autocast():
            return _logits(self.module(x)).float()


def task_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              teacher: Callable[[torch.Tensor], object] | None, temperature: float = 4.0) -> torch.Tensor:
    """Distillation from `teacher` (KL at a temperature, scaled by its square) when given, else
    cross-entropy on the labels."""
    out = _logits(model(x)).float()
    if teacher is not None:
        with torch.no_grad():
            target = _logits(teacher(x)).float()
        return distill_loss(out, target, temperature)
    assert y is not None
    return F.cross_entropy(out, y)


def distill_loss(out: torch.Tensor, target: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """How far the student's outputs are from the teacher's, in the terms of what the outputs are. Logits: KL at
    a temperature over each row, scaled by its square. Probabilities a Softmax already made (every row in [0, 1]
    summing to 1): KL of their logs. Probabilities of a Sigmoid (a text or heat map, multi-label scores: in
    [0, 1], rows not summing to 1): binary cross-entropy per value. A softmax over such a map's values would
    see a map shifted as a whole (blank where the teacher has text) as no loss at all."""
    if float(target.min()) >= 0.0 and float(target.max()) <= 1.0:
        eps = 1e-6
        if torch.allclose(target.sum(1), torch.ones_like(target[:, 0]), atol=1e-3):
            return F.kl_div(out.clamp_min(eps).log(), target, reduction="batchmean")
        return F.binary_cross_entropy(out.clamp(eps, 1 - eps), target)
    return F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(target / temperature, 1),
                    reduction="batchmean") * temperature**2


def train(model: nn.Module, data: Dataset, *, teacher: nn.Module | None, epochs: float, lr: float,
          batch_size: int, device: torch.device | str, tick: Tick | None = None, temperature: float = 4.0,
          max_seconds: float | None = None, seed: int = 0, precision: str = "fp32",
          mixup: bool = False) -> dict[str, Any]:
    """SGD with momentum and a cosine schedule; distillation from `teacher` when given (no labels
    needed), else cross-entropy on the labels. With `max_seconds`, the schedule follows whichever runs out
    first, steps or time, so a run cut by its time budget still ends with its learning rate annealed
    (a step-only cosine cut halfway stops at half the learning rate, far from its best). `precision`
    ("auto", "fp32", "bf16") is the arithmetic of the forward and backward passes: bf16 runs them under
    autocast (pruned ResNet-56 on an AVX-512 BF16 CPU: 0.43 s a step of 128 against 0.66 s), the weights
    and their updates stay float32. `mixup` (distillation only) blends the images of each batch pairwise
    before both models see them."""
    if teacher is None and data.y is None:
        raise SpecError("recovery finetune needs labels: give calibration data with a y array, or use distill")
    if mixup and teacher is None:
        raise SpecError("recovery.mixup is for distill: mixed images have no labels to fine-tune on")
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, int(round(epochs * steps_per_epoch)))
    example = torch.from_numpy(data.x[: min(n, batch_size)]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    precision = resolve_precision(precision, device)
    teach = None if teacher is None else Teacher(teacher, example, device, precision)
    step, t0, last = 0, time.monotonic(), 0.0
    running = 0.0
    while step < total:
        model.train()
        for x, y in _batches(data, n, batch_size, device, shuffle=True, generator=gen):
            if step >= total:
                break
            x = _augment(x, gen)
            if mixup:
                x = _mix(x, gen)
            with _autocast(precision, device):
                loss = task_loss(model, x, y, teach, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            done = step / total
            if max_seconds is not None:
                done = max(done, (time.monotonic() - t0) / max_seconds)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
            opt.step()
            step += 1
            value = float(loss.detach())
            running = 0.9 * running + 0.1 * value if step > 1 else value
            now = time.monotonic()
            if tick is not None and (now - last > 2.0 or step == total):
                last = now
                tick(step / total, f"step {step}/{total}", {"loss": running, "epoch": step / steps_per_epoch})
            if max_seconds is not None and now - t0 > max_seconds:
                total = step
                break
    model.eval()
    return {"steps": float(step), "epochs": step / steps_per_epoch, "loss": running,
            "seconds": time.monotonic() - t0, "last_lr": float(opt.param_groups[0]["lr"]), "precision": precision,
            **({"mixup": True} if mixup else {})}
