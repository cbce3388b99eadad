"""Channels as arms of a combinatorial bandit ("Dynamic Neural Network Channel Execution for Efficient
Training"): during a short fine-tune every step executes only a subset of each group's channels, chosen
by a combinatorial upper confidence bound (CUCB) on their estimated usefulness; the estimates, learned
while the network trains to work with subsets, become the channel scores.

Usefulness of an executed channel at a step is |sum of activation x gradient| where it enters its
consumers (the Taylor term), scaled by the step's largest in the group so that rewards lie in [0, 1].
A channel not selected is zeroed at the input of every consumer, so it does no work in them and gets
no gradient; the report counts channel-steps executed against a dense fine-tune's. Scores are scaled so that
each group's k-th best arm scores 1 (see the end of _run).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..recovery import _augment, _batches, task_loss
from .base import GroupScorer, ScoringContext, register


def _default_keep(kind: str, target: float) -> float:
    # MACs and parameters fall roughly with the square of the channel fraction kept.
    return target if kind == "channels" else math.sqrt(target)


@register("bandit")
def bandit(ctx: ScoringContext) -> GroupScorer:
    scores: dict[int, np.ndarray] = {}

    def scorer(g: int) -> np.ndarray | None:
        if not scores:
            scores.update(_run(ctx))
        return scores.get(g)

    return scorer


def _run(ctx: ScoringContext) -> dict[int, np.ndarray]:
    assert ctx.calibration is not None
    model, analysis, data = ctx.model, ctx.analysis, ctx.calibration
    opts = ctx.options
    keep = float(opts.get("bandit_keep") or _default_keep(str(opts.get("kind", "macs")), float(opts.get("target", 0.5))))
    alpha = float(opts.get("bandit_exploration", 0.5))
    modules = dict(model.named_modules())
    device = ctx.device

    # which (group, input index, root channel) every consumer layer reads
    reads: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for g, info in enumerate(analysis.groups):
        for t in info.touches:
            if not t.is_out:
                valid = t.root_idxs >= 0
                reads.setdefault(t.layer, []).append((g, t.idxs[valid], t.root_idxs[valid]))
    arms = {g: analysis.groups[g].channels for g in {g for r in reads.values() for g, _, _ in r}}
    k = {g: max(1, math.ceil(keep * c)) for g, c in arms.items()}
    pulls = {g: np.zeros(c) for g, c in arms.items()}
    means = {g: np.zeros(c) for g, c in arms.items()}
    chosen = {g: np.ones(c, dtype=bool) for g, c in arms.items()}
    step_reward = {g: np.zeros(c) for g, c in arms.items()}

    def pre_hook(name: str):  # noqa: ANN202
        module = modules[name]
        linear = isinstance(module, nn.Linear)

        def fn(m: nn.Module, inputs: tuple[torch.Tensor, ...]):  # noqa: ANN202
            x = inputs[0]
            width = x.shape[-1] if linear else x.shape[1]
            mult = torch.ones(width, device=x.device)
            for g, local, root in reads[name]:
                mult[torch.from_numpy(local)] = torch.from_numpy(chosen[g][root].astype(np.float32)).to(x.device)
            shape = [1] * x.dim()
            shape[-1 if linear else 1] = width
            masked = x * mult.view(shape)
            if masked.requires_grad:
                # The hook must not hold `masked` itself: a tensor whose hook refers back to it is a cycle
                # through C++ that the garbage collector cannot see, and every step's activations leaked
                # (about 450 MB a FashionNet job over 10k images, until a long claim run was OOM-killed).
                act = masked.detach()

                def grad_hook(grad: torch.Tensor) -> None:
                    ag = (act * grad.detach())
                    dims = [d for d in range(ag.dim()) if d != (ag.dim() - 1 if linear else 1)]
                    per = ag.sum(dim=dims).abs().double().cpu().numpy()
                    for g, local, root in reads[name]:
                        np.add.at(step_reward[g], root, per[local])

                masked.register_hook(grad_hook)
            return (masked, *inputs[1:])

        return fn

    handles = [modules[name].register_forward_pre_hook(pre_hook(name)) for name in reads]
    teacher = ctx.teacher
    lr = float(opts.get("lr") or 0.01)
    batch_size = int(opts.get("batch_size", 64))
    n = min(len(data), max(ctx.samples, batch_size))
    total = max(1, int(round(float(opts.get("bandit_epochs", 1.0)) * math.ceil(n / batch_size))))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(ctx.seed)
    executed = dense = 0
    step = 0
    try:
        while step < total:
            model.train()
            for x, y in _batches(data, n, batch_size, device, shuffle=True, generator=gen):
                if step >= total:
                    break
                step += 1
                for g in arms:  # CUCB: the k arms with the highest upper confidence bound
                    bonus = np.where(pulls[g] > 0, alpha * np.sqrt(np.log(step + 1) / np.maximum(pulls[g], 1)), np.inf)
                    ucb = means[g] + bonus
                    sel = np.argsort(-ucb, kind="stable")[: k[g]]
                    chosen[g][:] = False
                    chosen[g][sel] = True
                    step_reward[g][:] = 0
                    executed += k[g]
                    dense += arms[g]
                x = _augment(x, gen)
                loss = task_loss(model, x, y, teacher if y is None else None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for g in arms:  # rewards in [0, 1]: usefulness relative to the group's best this step
                    r = step_reward[g]
                    top = r[chosen[g]].max() if chosen[g].any() else 0.0
                    r = r / top if top > 0 else r
                    sel = chosen[g]
                    pulls[g][sel] += 1
                    means[g][sel] += (r[sel] - means[g][sel]) / pulls[g][sel]
                if ctx.check is not None:
                    ctx.check()
                if ctx.progress is not None and (step % 10 == 0 or step == total):
                    ctx.progress(step / total, f"bandit step {step}/{total}", {"loss": float(loss.detach())})
    finally:
        for h in handles:
            h.remove()
        model.eval()
    ctx.report["bandit"] = {
        "steps": step,
        "channel_steps_executed": int(executed),
        "channel_steps_dense": int(dense),
        "executed_fraction": executed / dense if dense else 1.0,
        "keep": keep,
    }
    # Each group's k-th best estimate scores 1: the arms the sparse fine-tune ran most (the top k) score 1 or
    # more, the rest less, so a global threshold near 1 keeps in every group the channels its fine-tune taught
    # the network to work with. (Mean-normalised, a group whose estimates are spread out loses arms it ran.)
    out = {}
    for g in arms:
        s = means[g] + 1e-6
        out[g] = s / np.sort(s)[::-1][k[g] - 1]
    return out
