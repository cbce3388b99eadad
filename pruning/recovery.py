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
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .distill import output_loss, outputs_of, total_loss
from .errors import SpecError
from .fidelity import OutputKind
from .inputs import Example, as_tuple, call, tensors

Tick = Callable[[float, str, dict[str, float]], None]  # fraction, message, metrics; may raise Cancelled


def _batches(data: Dataset, n: int, batch_size: int, device: torch.device | str, shuffle: bool = False,
             generator: torch.Generator | None = None):  # type: ignore[no-untyped-def]
    idx = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        sel = idx[start : start + batch_size].numpy()
        x = tensors(data.arrays(sel), device)  # a tensor, or one per input for a model with several
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
        call(model, x)
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
                    call(model, x)
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
        call(model, tensors(data.arrays(slice(None, 1)), device))
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


def _augment(x: Example, generator: torch.Generator, flips: bool = True) -> Example:
    """Random horizontal flips (unless `flips` is False: text read left to right) and 4-pixel crops, each image its
    own, for image batches (N, C, H, W) of 16 pixels or more. (One crop offset for a whole batch moves every image alike: 81 variants of the batch
    instead of 81 per image.) With several image inputs (two views of one scene), a sample's flip and crop are drawn
    once and shared: every image input of the first one's height and width gets both, one of another size the flip
    only (the same offset would not cut the same part of it). A model's other inputs (sizes, ids) stay as they
    are."""
    tensors = as_tuple(x)
    images = [t for t in tensors if _is_image(t)]
    if not images:
        return x
    n, size = images[0].shape[0], images[0].shape[2:]
    flip = (torch.rand(n, generator=generator) < 0.5) & flips
    dy, dx = torch.randint(0, 9, (2, n), generator=generator)
    out = tuple(_flip_crop(t, flip, (dy, dx) if t.shape[2:] == size else None) if _is_image(t) else t
                for t in tensors)
    return out if isinstance(x, tuple) else out[0]


def _is_image(t: torch.Tensor) -> bool:
    return t.dim() == 4 and min(t.shape[2:]) >= 16 and t.is_floating_point()


def _flip_crop(x: torch.Tensor, flip: torch.Tensor, shift: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Each image flipped where `flip` says, then, given `shift` (rows, columns, 0 to 8 each), cut at that offset
    from the image padded by 4 pixels."""
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if shift is None:
        return x
    n, c, h, w = x.shape
    dy, dx = (s.to(x.device) for s in shift)
    padded = F.pad(x, (4, 4, 4, 4))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [N, 1, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def _mix(x: Example, generator: torch.Generator) -> Example:
    """Each input blended with another of the batch at its own uniform random ratio (mixup without labels).
    For distillation only: teacher and student see the same blend, so the student matches the teacher's
    function between the calibration images, not only at them (Beyer et al. 2022, "Knowledge distillation:
    A good teacher is patient and consistent"). With several inputs, the image ones are blended with the same
    partners; the others (sizes, ids) stay each sample's own."""
    if isinstance(x, tuple):
        if x[0].shape[0] < 2:
            return x
        partner = torch.randperm(x[0].shape[0], generator=generator)
        ratio = torch.rand(x[0].shape[0], generator=generator)
        return tuple(_blend(t, partner, ratio) if t.dim() == 4 and t.is_floating_point() else t for t in x)
    if x.shape[0] < 2 or not x.is_floating_point():
        return x
    partner = torch.randperm(x.shape[0], generator=generator)
    return _blend(x, partner, torch.rand(x.shape[0], generator=generator))


def _blend(x: torch.Tensor, partner: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return ratio * x + (1 - ratio) * x[partner.to(x.device)]


class Teacher:
    """The original model's outputs for distillation, every output in its own shape. In float32 on the CPU its
    forward pass runs in ONNX Runtime when the export reproduces the module's outputs: ResNet-56 at batch 128 on 2
    threads takes 0.29 s there against 0.47-0.79 s in eager PyTorch (AMD EPYC with AVX-512: 0.15 s against 0.35 s),
    and the teacher's pass is a quarter of every distillation step. In bf16 the module runs under autocast (0.12 s
    on that EPYC). Elsewhere (CUDA), or when the export or its check fails, the module itself runs."""

    def __init__(self, module: nn.Module, example: Example, device: torch.device | str,
                 precision: str = "fp32", batch_axes: list[int] | None = None) -> None:
        self.module = module.eval()
        self.session: Any = None
        self.autocast = lambda: _autocast(precision, device)
        self.names = [f"x{i}" for i in range(len(as_tuple(example)))]
        if torch.device(device).type != "cpu" or as_tuple(example)[0].dim() < 2 or precision == "bf16":
            return
        try:
            self.session = self._session(example, batch_axes)
        except Exception:  # noqa: BLE001 - any export or runtime failure: the module runs instead
            self.session = None

    def _session(self, example: Example, batch_axes: list[int] | None) -> Any:
        from .onnx_tools import export
        from .onnx_tools import session as ort_session

        with torch.no_grad():
            ref = [t.numpy() for t in outputs_of(call(self.module, example))]
        names = [f"y{i}" for i in range(len(ref))]
        axes = batch_axes if batch_axes is not None and len(batch_axes) == len(ref) else [0] * len(ref)
        data = export(self.module, tuple(t[:1] for t in as_tuple(example)), input_name=self.names, output_names=names,
                      dynamic_axes={**{x: {0: "batch"} for x in self.names},
                                    **{n: {b: "batch"} for n, b in zip(names, axes, strict=True)}},
                      opset=17)
        # no spinning: between teacher passes the CPU belongs to PyTorch's backward pass
        session = ort_session(data, threads=max(1, torch.get_num_threads()), spin=False)
        got = session.run(None, self._feed(example))
        for g, r in zip(got, ref, strict=True):
            scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            if g.shape != r.shape or not np.allclose(g, r, atol=1e-3 * scale):
                return None
        return session

    def _feed(self, x: Example) -> dict[str, np.ndarray]:
        return {n: t.contiguous().numpy() for n, t in zip(self.names, as_tuple(x), strict=True)}

    @torch.no_grad()
    def __call__(self, *x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs on the inputs `x`, called as the module is (one tensor per input)."""
        if self.session is not None:
            return [torch.from_numpy(o) for o in self.session.run(None, self._feed(x))]
        with self.autocast():
            return [t.float() for t in outputs_of(self.module(*x))]


def task_loss(model: nn.Module, x: Example, y: torch.Tensor | None,
              teacher: Callable[..., object] | None, temperature: float = 4.0,
              kinds: list[OutputKind] | None = None) -> torch.Tensor:
    """Distillation from `teacher` when given: on every output by its kind (distill.py) when the kinds are known,
    else on the first output, flattened (`distill_loss`). Without a teacher, cross-entropy on the labels."""
    out = call(model, x)
    device = as_tuple(x)[0].device
    if teacher is not None:
        with torch.no_grad():  # a Teacher gives a list; an nn.Module (the bandit's) a tensor or a tuple
            target = outputs_of(call(teacher, x))
        student = outputs_of(out)
        if kinds is not None:
            return total_loss(kinds, [s.float() for s in student], [t.float().to(device) for t in target],
                              temperature)
        return distill_loss(_logits(student[0]).float(), _logits(target[0]).float().to(device), temperature)
    assert y is not None
    return F.cross_entropy(_logits(out).float(), y)


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


MIN_STEPS = 200  # the default length when no epochs are given: at least this many steps, at least one epoch,
DEFAULT_SECONDS = 600.0  # within this long unless recovery.max_minutes says otherwise
CHECKS = 10  # validations over a run (and one before it)
VALIDATION_ELEMENTS = 1 << 25  # the teacher's output values kept for validation, at most (128 MB in float32)
DEFAULT_LR = 0.01
# Tried for a tenth of the run each when no learning rate is given and there is validation data: the best one for
# a classifier is not the best for a dense map (a DBNet-style map at half its MACs, 200 steps of 51 images, IoU
# against the original: 0.65 at 0.01, 0.87 at 0.05).
LR_TRIALS = (0.01, 0.03, 0.1)
TRIAL_SHARE = 0.1


def train(model: nn.Module, data: Dataset, *, teacher: nn.Module | None, epochs: float | None, lr: float | None,
          batch_size: int, device: torch.device | str, tick: Tick | None = None, temperature: float = 4.0,
          max_seconds: float | None = None, seed: int = 0, precision: str = "fp32", mixup: bool = False,
          kinds: list[OutputKind] | None = None, validation: Dataset | None = None,
          flips: bool = True) -> dict[str, Any]:
    """SGD with momentum and a cosine schedule; distillation from `teacher` when given (no labels
    needed), else cross-entropy on the labels. With `max_seconds`, the schedule follows whichever runs out
    first, steps or time, so a run cut by its time budget still ends with its learning rate annealed
    (a step-only cosine cut halfway stops at half the learning rate, far from its best). `precision`
    ("auto", "fp32", "bf16") is the arithmetic of the forward and backward passes: bf16 runs them under
    autocast (pruned ResNet-56 on an AVX-512 BF16 CPU: 0.43 s a step of 128 against 0.66 s), the weights
    and their updates stay float32. `mixup` (distillation only) blends the images of each batch pairwise
    before both models see them.

    `epochs` None sizes the run to the data: at least MIN_STEPS steps and one epoch, within DEFAULT_SECONDS
    (one epoch of 50 images is one step, which recovers nothing). `kinds` (fidelity.py) makes distillation
    compare every output by its kind. With `validation`, data the training never sees, the student is scored
    against the teacher there in the kinds' own metric (before training, CHECKS times during it and at its
    end), and the best state is the one kept: training never hands back a model worse there than it started.
    `lr` None picks the learning rate: with validation, each of LR_TRIALS runs a tenth of the budget from the
    same start and the run goes on from the best one's state; without, DEFAULT_LR."""
    if teacher is None and data.y is None:
        raise SpecError("recovery finetune needs labels: give calibration data with a y array, or use distill")
    if mixup and teacher is None:
        raise SpecError("recovery.mixup is for distill: mixed images have no labels to fine-tune on")
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    if epochs is None:
        total = max(steps_per_epoch, MIN_STEPS)
        max_seconds = DEFAULT_SECONDS if max_seconds is None else max_seconds
    else:
        total = max(1, int(round(epochs * steps_per_epoch)))
    example = tensors(data.arrays(slice(None, min(n, batch_size))), device)
    gen = torch.Generator().manual_seed(seed)
    precision = resolve_precision(precision, device)
    with _ChannelsLast([model] if teacher is None else [model, teacher], example) as layout:
        teach = None if teacher is None else Teacher(teacher, example, device, precision,
                                                     None if kinds is None else [k.batch_axis for k in kinds])
        judge = None if validation is None or teach is None or kinds is None else _Judge(validation, teach, kinds, device,
                                                                                           temperature)
        state = _State(model, judge)
        state.check(0)
        loop = _Loop(model, data, batch_size, device, gen, precision, mixup, flips, teach, temperature, kinds, tick,
                     steps_per_epoch, state, layout)
        loop.planned = total
        t0 = time.monotonic()
        trials: list[dict[str, float]] = []
        if lr is None and judge is not None and total >= 10 * len(LR_TRIALS):
            start = copy.deepcopy(model.state_dict())
            steps = max(1, int(total * TRIAL_SHARE))
            seconds = None if max_seconds is None else max_seconds * TRIAL_SHARE
            results = []
            for trial_lr in LR_TRIALS:
                model.load_state_dict(start)
                done = loop.run(steps, trial_lr, seconds, quiet=True)
                score = judge(model)
                trials.append({"lr": trial_lr, "steps": float(done), "drop_points": score[0], "loss": score[1]})
                results.append((score, trial_lr, copy.deepcopy(model.state_dict()), done))
            # a trial that diverged scores NaN: it sorts last, not wherever min() happens to leave it
            score, lr, best_trial, done = min(results, key=lambda r: tuple(math.inf if math.isnan(v) else v for v in r[0]))
            model.load_state_dict(best_trial)
            state.consider(score, loop.step)
            total = max(1, total - steps * len(LR_TRIALS))
            if max_seconds is not None:
                max_seconds = max(0.0, max_seconds - (time.monotonic() - t0))
        lr = DEFAULT_LR if lr is None else lr
        loop.run(total, lr, max_seconds)
        state.check(loop.step)
        out: dict[str, Any] = {"steps": float(loop.step), "epochs": loop.step / steps_per_epoch, "loss": loop.running,
                               "seconds": time.monotonic() - t0, "lr": lr, "last_lr": loop.last_lr, "precision": precision,
                               **({"channels_last": True} if layout.on else {}),
                               **({"mixup": True} if mixup else {}), **({"lr_trials": trials} if trials else {})}
        if state.best is not None:
            model.load_state_dict(state.best[1])
            out.update(validation_samples=len(judge.data) if judge is not None else 0, kept_step=state.best[2],
                       validation_drop_points=round(state.best[0][0], 4), checks=state.checks)
        model.eval()
        return out


class _ChannelsLast:
    """Convolutional models train in the channels-last layout and are handed back in the usual one. Pruned
    ResNet-56, a distillation step of 128 on one thread of an AVX-512 BF16 CPU: 0.44 s against 0.56 s in bf16,
    0.80 s against 0.95 s in float32; the teacher's bf16 pass 0.085 s against 0.134 s. A model whose forward pass
    breaks in that layout (a `view` that needs the usual strides) keeps its own: the layout is tried on two samples
    first."""

    def __init__(self, modules: list[nn.Module], example: Example) -> None:
        self.modules, self.example = modules, example
        self.on = False

    def __enter__(self) -> _ChannelsLast:
        if all(t.dim() != 4 for t in as_tuple(self.example)) or not any(isinstance(m, nn.Conv2d) for m in self.modules[0].modules()):
            return self
        for m in self.modules:
            m.to(memory_format=torch.channels_last)
        try:
            with torch.no_grad():
                probe = _to_channels_last(tuple(t[:2] for t in as_tuple(self.example)))
                for m in self.modules:
                    was = m.training
                    try:
                        call(m.eval(), probe)
                    finally:  # a failed probe leaves the module in the mode it came in
                        m.train(was)
            self.on = True
        except Exception:  # noqa: BLE001 - any failure in that layout: train in the usual one
            self._restore()
        return self

    def _restore(self) -> None:
        for m in self.modules:
            m.to(memory_format=torch.contiguous_format)

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self._restore()

    def __call__(self, x: Example) -> Example:
        return _to_channels_last(x) if self.on else x


def _to_channels_last(x: Example) -> Example:
    """The 4-D inputs in the channels-last layout (a model's several inputs: its image ones), the others as they are."""
    if isinstance(x, tuple):
        return tuple(_to_channels_last(t) for t in x)  # type: ignore[misc]
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class _State:
    """The best state seen on the validation data, with every check's figures."""

    def __init__(self, model: nn.Module, judge: _Judge | None) -> None:
        self.model, self.judge = model, judge
        self.best: tuple[tuple[float, float], dict[str, torch.Tensor], int] | None = None
        self.checks: list[dict[str, float]] = []

    def check(self, step: int) -> None:
        if self.judge is not None:
            self.consider(self.judge(self.model), step)

    def consider(self, score: tuple[float, float], step: int) -> None:
        self.checks.append({"step": float(step), "drop_points": score[0], "loss": score[1]})
        if math.isnan(score[0]) or math.isnan(score[1]):
            return
        if self.best is None or score < self.best[0]:
            self.best = (score, copy.deepcopy(self.model.state_dict()), step)


class _Loop:
    """Training steps with a fresh SGD and a cosine schedule per call of `run`, counting steps over all calls."""

    def __init__(self, model: nn.Module, data: Dataset, batch_size: int, device: torch.device | str,
                 gen: torch.Generator, precision: str, mixup: bool, flips: bool, teach: Teacher | None,
                 temperature: float, kinds: list[OutputKind] | None, tick: Tick | None, steps_per_epoch: int,
                 state: _State, layout: _ChannelsLast) -> None:
        self.model, self.data, self.batch_size, self.device, self.gen = model, data, batch_size, device, gen
        self.precision, self.mixup, self.flips, self.teach = precision, mixup, flips, teach
        self.temperature, self.kinds, self.tick, self.steps_per_epoch, self.state = (
            temperature, kinds, tick, steps_per_epoch, state)
        self.layout = layout
        self.step, self.running, self.last_lr, self.last_tick = 0, 0.0, 0.0, 0.0
        self.planned = 1  # the steps of the whole training, over every call of `run`: what progress counts to

    def run(self, total: int, lr: float, max_seconds: float | None, quiet: bool = False) -> int:
        """`total` steps (or `max_seconds`), validating CHECKS times unless `quiet`; returns the steps taken."""
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        every = max(1, math.ceil(total / CHECKS))
        taken, t0 = 0, time.monotonic()
        while taken < total:
            model.train()
            for x, y in _batches(self.data, len(self.data), self.batch_size, self.device, shuffle=True,
                                 generator=self.gen):
                if taken >= total:
                    break
                x = _augment(x, self.gen, self.flips)
                if self.mixup:
                    x = _mix(x, self.gen)
                x = self.layout(x)
                with _autocast(self.precision, self.device):
                    loss = task_loss(model, x, y, self.teach, self.temperature, self.kinds)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                done = taken / total
                if max_seconds is not None:
                    done = max(done, (time.monotonic() - t0) / max(max_seconds, 1e-9))
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
                opt.step()
                taken += 1
                self.step += 1
                value = float(loss.detach())
                self.running = 0.9 * self.running + 0.1 * value if self.step > 1 else value
                self.last_lr = float(opt.param_groups[0]["lr"])
                now = time.monotonic()
                if self.tick is not None and (now - self.last_tick > 2.0 or taken == total):
                    self.last_tick = now
                    self.tick(min(self.step / self.planned, 1.0), f"step {self.step}/{self.planned} (lr {lr:g})",
                              {"loss": self.running, "epoch": self.step / self.steps_per_epoch})
                if max_seconds is not None and now - t0 > max_seconds:
                    return taken
                if not quiet and taken % every == 0 and taken < total:
                    self.state.check(self.step)
        return taken


class _Judge:
    """The student against the teacher on validation data, in the worst output's metric (points of drop), with the
    distillation loss as the tie-break: a pair that sorts lower is better."""

    def __init__(self, data: Dataset, teacher: Teacher, kinds: list[OutputKind], device: torch.device | str,
                 temperature: float = 4.0) -> None:
        self.kinds, self.device, self.temperature = kinds, device, temperature
        # the teacher's outputs are kept for every check: at most VALIDATION_ELEMENTS values (a 21-class 512 x 512
        # segmentation is 5.5 M values a sample; 256 of them would hold 5.6 GB twice over)
        self.targets: list[list[torch.Tensor]] = []
        held = 0
        for x, _ in _batches(data, len(data), 16, device):
            outs = self._gather(call(teacher, x))
            self.targets.append(outs)
            held += as_tuple(x)[0].shape[0]
            if sum(o.numel() for batch in self.targets for o in batch) >= VALIDATION_ELEMENTS:
                break
        self.data = data.head(held)

    def _gather(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [o.detach().float().cpu() for o in outs]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> tuple[float, float]:
        from .fidelity import compare

        was = model.training
        model.eval()
        got = [self._gather(outputs_of(call(model, x))) for x, _ in _batches(self.data, len(self.data), 16, self.device)]
        model.train(was)
        drops, losses = [], []
        for i, kind in enumerate(self.kinds):
            s = torch.cat([g[i] for g in got], kind.batch_axis)
            t = torch.cat([g[i] for g in self.targets], kind.batch_axis)
            drops.append(compare(kind, t.numpy(), s.numpy(), None)["drop_points"])
            losses.append(float(output_loss(kind, s, t, self.temperature)))
        return max(drops), sum(losses)
