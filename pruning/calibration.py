"""Measure what data-driven signals need: per-channel statistics of the feature maps, and of their
gradients, where they enter the layers that consume each dependency group.

The measuring point is the input of every consumer (a conv or linear layer losing input channels in
the group): that is the feature map a pruned channel stops feeding, after BatchNorm, the activation and
any residual add. A channel read by several consumers (a residual stream) is measured at each, and the
signal aggregates them; consumers that read the very same tensor are counted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .analysis import Analysis
from .data import Dataset
from .distill import hard_target_loss, outputs_of
from .fidelity import OutputKind
from .inputs import Example, call, tensors, to


@dataclass
class LayerStats:
    """Accumulators per input channel (or input feature, for linear layers) of one consumer layer."""

    channels: int
    count: torch.Tensor  # elements seen per channel
    total: torch.Tensor
    total_abs: torch.Tensor
    total_sq: torch.Tensor
    zeros: torch.Tensor
    act_grad: torch.Tensor  # sum of a * dL/da
    act_grad_abs: torch.Tensor  # sum of |a * dL/da|
    fisher: torch.Tensor  # sum over samples of (sum over positions of a * dL/da)^2
    grad_sq: torch.Tensor
    samples: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)  # sampled activation vectors (similarity)

    @classmethod
    def empty(cls, channels: int) -> LayerStats:
        z = lambda: torch.zeros(channels, dtype=torch.float64)  # noqa: E731
        return cls(channels, z(), z(), z(), z(), z(), z(), z(), z(), z())

    def mean(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)

    def std(self) -> torch.Tensor:
        m = self.mean()
        return (self.total_sq / self.count.clamp(min=1) - m * m).clamp(min=0).sqrt()


def _channels_last(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """[elements, C] view of a consumer's input, C being the dimension the layer reads."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return x.transpose(0, 1).reshape(x.shape[1], -1).t()


def _per_sample_channel_sums(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """[N, C]: sum over positions for each sample and channel."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).sum(1)
    return x.reshape(x.shape[0], x.shape[1], -1).sum(-1)


class Collector:
    def __init__(
        self,
        model: nn.Module,
        analysis: Analysis,
        *,
        gradients: bool,
        rows: int = 0,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.model = model
        self.gradients = gradients
        self.max_rows = rows
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        modules = dict(model.named_modules())
        self.consumers = {t.layer: modules[t.layer] for g in analysis.groups for t in g.touches if not t.is_out}
        self.stats: dict[str, LayerStats] = {}
        self.alias: dict[str, str] = {}  # consumer -> the first consumer that read the same tensor

    def run(self, data: Dataset, samples: int, batch_size: int = 64, teacher: nn.Module | None = None,
            kinds: list[OutputKind] | None = None) -> None:
        """One pass over the data; with gradients, of the task loss (labels) or, without labels, of the loss
        against the teacher's (the original model's) hardened predictions: with the outputs' `kinds`, every
        output by its kind (`distill.hard_target_loss`), else the cross-entropy of the first output, flattened,
        against the teacher's argmax."""
        handles = []
        # tensor id -> (first consumer, the tensor): holding the tensor keeps its id from being reused
        seen: dict[int, tuple[str, torch.Tensor]] = {}

        def hook(name: str):  # noqa: ANN202
            def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                x = inputs[0]
                key = id(x)
                if key in seen and seen[key][0] != name:
                    self.alias.setdefault(name, seen[key][0])
                    return
                seen[key] = (name, x)
                self._observe(name, module, x)

            return fn

        for name, module in self.consumers.items():
            handles.append(module.register_forward_pre_hook(hook(name)))
        was_training = self.model.training
        self.model.eval()
        try:
            for x, y in _batches(data, samples, batch_size):
                seen.clear()
                x = to(x, self.device)
                if not self.gradients:
                    with torch.no_grad():
                        call(self.model, x)
                    continue
                self.model.zero_grad(set_to_none=True)
                out = call(self.model, x)
                if y is None:
                    if teacher is None:
                        raise ValueError("gradients without labels need a teacher")
                    with torch.no_grad():
                        target = call(teacher, x)
                    outs, targets = outputs_of(out), outputs_of(target)
                    if kinds is not None and len(outs) == len(targets) == len(kinds):
                        loss = torch.stack([hard_target_loss(k, o, t, self.generator)
                                            for k, o, t in zip(kinds, outs, targets, strict=True)]).sum()
                    else:
                        loss = F.cross_entropy(_logits(out), _logits(target).argmax(1), reduction="sum")
                else:
                    loss = F.cross_entropy(_logits(out), y.to(self.device), reduction="sum")
                loss.backward()
        finally:
            for h in handles:
                h.remove()
            self.model.zero_grad(set_to_none=True)
            self.model.train(was_training)

    def _observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        a = x.detach()
        flat = _channels_last(a, module).double()
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = LayerStats.empty(flat.shape[1])
        st.count += flat.shape[0]
        st.total += flat.sum(0).cpu()
        st.total_abs += flat.abs().sum(0).cpu()
        st.total_sq += (flat * flat).sum(0).cpu()
        st.zeros += (flat == 0).sum(0).double().cpu()
        st.samples += a.shape[0]
        if self.max_rows and sum(r.shape[0] for r in st.rows) < self.max_rows:
            take = min(self.max_rows - sum(r.shape[0] for r in st.rows), flat.shape[0], 256)
            pick = torch.randperm(flat.shape[0], generator=self.generator)[:take]
            st.rows.append(flat[pick.to(flat.device)].float().cpu())
        if self.gradients and x.requires_grad:

            def grad_hook(g: torch.Tensor) -> None:
                ag = a * g.detach()
                flat_ag = _channels_last(ag, module).double()
                st.act_grad += flat_ag.sum(0).cpu()
                st.act_grad_abs += flat_ag.abs().sum(0).cpu()
                st.fisher += (_per_sample_channel_sums(ag, module).double() ** 2).sum(0).cpu()
                st.grad_sq += (_channels_last(g.detach(), module).double() ** 2).sum(0).cpu()

            x.register_hook(grad_hook)

    # ------------------------------------------------------------------------------------------------
    def group_stack(self, analysis: Analysis, g: int, arrays: dict[str, torch.Tensor]) -> np.ndarray:
        """Per-consumer values mapped onto the group's root channels: [consumers, channels].

        Within a consumer, the inputs that follow one root channel (a flatten before a linear layer)
        are summed: pass numerators and denominators separately and divide afterwards."""
        info = analysis.groups[g]
        parts = []
        done = set()
        for t in info.touches:
            if t.is_out:
                continue
            layer = self.alias.get(t.layer, t.layer)
            if layer in done or layer not in arrays:
                continue
            done.add(layer)
            v = arrays[layer].numpy() if isinstance(arrays[layer], torch.Tensor) else arrays[layer]
            out = np.zeros(info.channels)
            valid = (t.root_idxs >= 0) & (t.idxs < v.shape[0])
            np.add.at(out, t.root_idxs[valid], v[t.idxs[valid]])
            parts.append(out)
        if not parts:
            return np.zeros((0, info.channels))
        return np.stack(parts)


def _logits(out: object) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out.reshape(out.shape[0], -1)


def _batches(data: Dataset, samples: int, batch_size: int) -> Iterator[tuple[Example, torch.Tensor | None]]:
    n = min(samples, len(data))
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        x = tensors(data.arrays(slice(start, end)))
        y = None if data.y is None else torch.from_numpy(data.y[start:end])
        yield x, y
