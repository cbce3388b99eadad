"""Signals that read what channels carry on calibration data: dead units, channel similarity, LASSO."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import _batches
from ..inputs import call, to
from .base import GroupScorer, ScoringContext, normalise, register

DEAD_RELATIVE_STD = 1e-3  # a channel whose spread is this small next to its layer's typical spread is dead
SIMILARITY_THRESHOLD = 0.9  # |correlation| at which two feature maps carry the same information


def _first_consumer(ctx: ScoringContext, g: int):  # type: ignore[no-untyped-def]
    """The first consumer reading the group's channels one to one (a conv or linear, not after a flatten)."""
    info = ctx.analysis.groups[g]
    for t in info.touches:
        if t.is_out:
            continue
        valid = t.root_idxs >= 0
        if valid.sum() == info.channels and len(np.unique(t.root_idxs[valid])) == info.channels:
            return t
    return None


@register("dead_units")
def dead_units(ctx: ScoringContext) -> GroupScorer:
    col = ctx.collect()
    st = col.stats
    total_dead = 0

    def scorer(g: int) -> np.ndarray | None:
        nonlocal total_dead
        info = ctx.analysis.groups[g]
        mean_n = col.group_stack(ctx.analysis, g, {k: v.total for k, v in st.items()})
        sq_n = col.group_stack(ctx.analysis, g, {k: v.total_sq for k, v in st.items()})
        count = col.group_stack(ctx.analysis, g, {k: v.count for k, v in st.items()})
        if count.shape[0] == 0:
            return None
        mean = mean_n / np.maximum(count, 1)
        std = np.sqrt(np.maximum(sq_n / np.maximum(count, 1) - mean * mean, 0))
        spread = std.max(0)  # dead only if dead for every consumer
        typical = float(np.median(spread))
        dead = np.flatnonzero(spread <= DEAD_RELATIVE_STD * max(typical, 1e-12))
        if info.blocks == 1 and 0 < len(dead) < info.channels:
            ctx.forced[g] = dead
            total_dead += len(dead)
            ctx.report["dead_channels"] = total_dead
            for t in info.touches:  # fold each dead channel's constant into its consumers' bias
                if t.is_out:
                    continue
                layer = col.alias.get(t.layer, t.layer)
                if layer not in st:
                    continue
                layer_mean = st[layer].mean().numpy()
                for local, root in zip(t.idxs, t.root_idxs, strict=True):
                    if root in dead and local < layer_mean.shape[0]:
                        ctx.folds.setdefault(t.layer, {})[int(local)] = (None, 0.0, float(layer_mean[local]))
        ctx.report.setdefault("dead_channels", total_dead)
        return normalise(spread, "mean")

    return scorer


@register("similarity")
def similarity(ctx: ScoringContext) -> GroupScorer:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    col = ctx.collect(rows=1024)
    threshold = float(ctx.options.get("similarity_threshold") or SIMILARITY_THRESHOLD)
    clustered = 0

    def scorer(g: int) -> np.ndarray | None:
        nonlocal clustered
        info = ctx.analysis.groups[g]
        t = _first_consumer(ctx, g)
        if t is None:
            return None
        layer = col.alias.get(t.layer, t.layer)
        st = col.stats.get(layer)
        if st is None or not st.rows:
            return None
        rows = torch.cat(st.rows).double().numpy()
        order = np.argsort(t.root_idxs)  # local columns in root-channel order
        a = rows[:, t.idxs[order]]
        strength = np.sqrt((a * a).mean(0))
        centred = a - a.mean(0)
        norms = np.linalg.norm(centred, axis=0)
        live = norms > 1e-12
        corr = np.zeros((info.channels, info.channels))
        if live.sum() > 1:
            c = centred[:, live] / norms[live]
            corr[np.ix_(live, live)] = np.abs(c.T @ c)
        np.fill_diagonal(corr, 1.0)
        # Average-linkage hierarchical clustering under distance 1 - |corr|, cut at the threshold.
        dist = np.clip(1.0 - corr, 0.0, None)
        dist = (dist + dist.T) / 2
        np.fill_diagonal(dist, 0.0)
        labels = fcluster(linkage(squareform(dist, checks=False), method="average"), t=1.0 - threshold,
                          criterion="distance")
        scores = 1.0 + strength / max(strength.mean(), 1e-12)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            if len(members) < 2:
                continue
            keep = members[np.argmax(strength[members])]
            for j in members[members != keep]:
                clustered += 1
                scores[j] = 1.0 - corr[j, keep]  # below every representative: these go first
                # fold j into its representative: a_j ~ alpha * a_keep + beta at every consumer
                x, y = a[:, keep], a[:, j]
                var = float(((x - x.mean()) ** 2).sum())
                alpha = float(((x - x.mean()) * (y - y.mean())).sum() / var) if var > 0 else 0.0
                beta = float(y.mean() - alpha * x.mean())
                ctx.merges.setdefault(g, {})[int(j)] = (int(keep), alpha, beta)
        ctx.report["similar_channels"] = clustered
        return scores

    return scorer


@register("lasso")
def lasso(ctx: ScoringContext) -> GroupScorer:
    """Channel selection by LASSO on the consumer's output (He et al. 2017). Channels are ranked by how
    early they enter the LASSO path: the last to enter are the least needed to reconstruct the output."""
    modules = dict(ctx.model.named_modules())
    ctx.options["reconstruct"] = True  # the paper refits the layer after selection

    def scorer(g: int) -> np.ndarray | None:
        t = _first_consumer(ctx, g)
        if t is None:
            return None
        module = modules[t.layer]
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or getattr(module, "groups", 1) != 1:
            return None
        z, y = _contributions(ctx, module)
        order = np.argsort(t.root_idxs)
        z = z[:, t.idxs[order]]
        return normalise(_lasso_path_entry(z, y), "max")

    return scorer


def _contributions(ctx: ScoringContext, module: nn.Module, rows: int = 256, outs: int = 64):  # type: ignore[no-untyped-def]
    """Z[:, c]: the consumer's output (flattened over sampled positions and outputs) due to input channel c."""
    assert ctx.calibration is not None
    captured: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(ctx.seed)

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, Cin*k*k, L]
            n, _, positions = cols.shape
            pick = torch.randint(positions, (n, 4), generator=gen)
            cols = cols.gather(2, pick[:, None, :].expand(n, cols.shape[1], 4).to(cols.device))
            captured.append(cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).cpu())
        else:
            captured.append(x.reshape(-1, x.shape[-1]).cpu())

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for x, _ in _batches(ctx.calibration, min(ctx.samples, 256), 64):
                call(ctx.model, to(x, ctx.device))
    finally:
        handle.remove()
    xs = torch.cat(captured).double()
    xs = xs[torch.randperm(xs.shape[0], generator=gen)[:rows]]
    w = module.weight.detach().double().cpu()
    cout = w.shape[0]
    pick_out = torch.randperm(cout, generator=gen)[: min(outs, cout)]
    w = w[pick_out]
    cin = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
    k = w[0].numel() // cin
    xs = xs.reshape(xs.shape[0], cin, k)
    w = w.reshape(w.shape[0], cin, k)
    z = torch.einsum("rck,ock->roc", xs, w).reshape(-1, cin)  # [rows*outs, Cin]
    y = z.sum(1)
    return z.numpy(), y.numpy()


def _lasso_path_entry(z: np.ndarray, y: np.ndarray, steps: int = 30, iters: int = 60) -> np.ndarray:
    """LASSO along a decreasing penalty (proximal gradient with momentum, warm-started); each channel
    scores how early it became non-zero on the path, plus its final coefficient as a tie-break."""
    gram = z.T @ z
    b = z.T @ y
    lipschitz = float(np.linalg.eigvalsh(gram)[-1]) or 1.0
    c = z.shape[1]
    beta = np.zeros(c)
    entry = np.zeros(c)
    lam_max = float(np.max(np.abs(b))) or 1.0
    for step, lam in enumerate(lam_max * np.geomspace(1.0, 1e-4, steps)):
        v, prev, t = beta.copy(), beta.copy(), 1.0
        for _ in range(iters):
            u = v - (gram @ v - b) / lipschitz
            beta = np.sign(u) * np.maximum(np.abs(u) - lam / lipschitz, 0.0)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            v = beta + (t - 1) / t_next * (beta - prev)
            prev, t = beta, t_next
        newly = (beta != 0) & (entry == 0)
        entry[newly] = steps - step
    return entry + np.abs(beta) / (np.abs(beta).max() + 1e-12)
