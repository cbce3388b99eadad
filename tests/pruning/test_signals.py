"""Each signal's definition, checked on tiny hand-made networks where the right answer is known."""

import math

import numpy as np
import pytest
import torch
from secateurs.pruning.analysis import analyse
from secateurs.pruning.data import Dataset
from secateurs.pruning.pipeline import _apply, _Copies, _score
from secateurs.pruning.signals import ScoringContext
from secateurs.pruning.spec import PruneSpec
from torch import nn


class Tiny(nn.Module):
    """conv1 (3->4) -> ReLU -> conv2 (4->6) -> ReLU -> pool -> fc (6->3). We rig conv1's channels."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _data(n=64, labels=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g).numpy()
    y = torch.randint(0, 3, (n,), generator=g).numpy() if labels else None
    return Dataset(x, y)


def _scores(model, signal, data=None, **options):
    model.eval()
    example = torch.zeros(1, 3, 8, 8)
    analysis = analyse(model, example, [])
    import copy

    ctx = ScoringContext(model=model, analysis=analysis, calibration=data, teacher=copy.deepcopy(model),
                         samples=64, has_batchnorm=any(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
                         options=options)
    spec = PruneSpec.model_validate({"signal": signal} if isinstance(signal, str) else {"signal": signal})
    scores = _score(ctx, spec)
    by_root = {analysis.groups[g].root: s for g, s in scores.items()}
    return by_root["conv1"], ctx, analysis


def _prune_once(analysis, removed, ctx, x):
    """The plan applied as the engine's first attempt does (to the analysed model itself), the analysed
    model's output on x from before, and the copies later attempts would start from."""
    with torch.no_grad():
        before = analysis.graph.model(x)
    copies = _Copies(analysis, torch.zeros(1, *x.shape[1:]))
    pruned, _ = _apply(copies, removed, ctx)
    return pruned, before, copies


def _net(seed=0, bn=False):
    torch.manual_seed(seed)
    return Tiny(bn)


def test_l1_and_l2_rank_the_smallest_weights_last():
    m = _net()
    with torch.no_grad():
        m.conv1.weight[1] *= 0.01  # channel 1: tiny filter...
        m.conv2.weight[:, 1] *= 0.01  # ...and tiny consumer weights
    for signal in ("l1_norm", "l2_norm"):
        s, _, _ = _scores(m, signal)
        assert np.argmin(s) == 1, (signal, s)


def test_bn_scale_reads_gamma():
    m = _net(bn=True)
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([1.0, 0.5, 0.01, 2.0]))
    s, _, _ = _scores(m, "bn_scale")
    assert list(np.argsort(s)) == [2, 1, 0, 3]


def test_fpgm_removes_the_filter_at_the_geometric_median():
    m = _net()
    with torch.no_grad():
        base = torch.randn(3, 3, 3)
        d1, d2 = torch.zeros(27), torch.zeros(27)
        d1[0], d2[1] = 4.0, 4.0  # orthogonal, equal length
        m.conv1.weight[0] = base + d1.reshape(3, 3, 3)
        m.conv1.weight[1] = base - d1.reshape(3, 3, 3)
        m.conv1.weight[2] = base + d2.reshape(3, 3, 3)
        m.conv1.weight[3] = base  # the geometric median of the four: the most replaceable
        m.conv2.weight[:] = m.conv2.weight[:, :1]  # consumers read every channel alike
    s, _, _ = _scores(m, "fpgm")
    assert np.argmin(s) == 3


def test_random_is_reproducible_and_spread():
    a, _, _ = _scores(_net(), "random")
    b, _, _ = _scores(_net(), "random")
    assert np.array_equal(a, b) and len(set(a.round(6))) == 4


def _dead_channel_net():
    m = _net()
    with torch.no_grad():
        m.conv1.weight[2].zero_()
        m.conv1.bias[2] = -1.0  # after the ReLU, channel 2 is zero everywhere
    return m


@pytest.mark.parametrize("signal", ["activation_mean", "apoz"])
def test_activation_statistics_put_the_dead_channel_last(signal):
    s, _, _ = _scores(_dead_channel_net(), signal, _data())
    assert np.argmin(s) == 2 and s[2] == 0


def test_dead_units_are_forced_out_and_counted():
    s, ctx, analysis = _scores(_dead_channel_net(), "dead_units", _data())
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    assert list(ctx.forced[group]) == [2]
    assert ctx.report["dead_channels"] >= 1


def test_a_constant_dead_unit_is_folded_into_the_next_bias_exactly():
    m = _net()
    with torch.no_grad():
        m.conv1.weight[2].zero_()
        m.conv1.bias[2] = 0.7  # constant 0.7 after the ReLU
        m.conv2.padding = (0, 0)  # no border effects: the fold is exact
    m.conv2.padding = (0, 0)
    data = _data()
    _, ctx, analysis = _scores(m, "dead_units", data)
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    x = torch.from_numpy(data.x[:8])
    bias = m.conv2.bias.detach().clone()
    pruned, before, copies = _prune_once(analysis, {group: np.array([2])}, ctx, x)
    assert pruned.conv1.out_channels == 3
    torch.testing.assert_close(pruned(x), before, atol=1e-5, rtol=1e-5)
    # the fold changed the pruned model's bias, not that of the copy later attempts start from
    assert not torch.equal(pruned.conv2.bias, bias)
    torch.testing.assert_close(copies.unpruned().conv2.bias, bias, rtol=0, atol=0)


def test_later_attempts_prune_an_unpruned_copy_as_a_fresh_analysis_would():
    """The first plan is applied to the analysed model in place (with the analysis's own graph); the
    attempts after it start from a copy taken before, which no attempt changes."""
    import copy

    m = _net(bn=True)
    reference = copy.deepcopy(m)
    _, ctx, analysis = _scores(m, "l2_norm")
    example = torch.zeros(1, 3, 8, 8)
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    copies = _Copies(analysis, example)
    first, _ = _apply(copies, {group: np.array([1])}, ctx)
    assert first is m and first.conv1.out_channels == 3
    second, kept = _apply(copies, {group: np.array([0, 2])}, ctx)
    third, _ = _apply(copies, {group: np.array([3])}, ctx)
    assert second.conv1.out_channels == 2 and third.conv1.out_channels == 3 and kept["conv1"].tolist() == [1, 3]
    for name, value in reference.state_dict().items():  # the spare is still the analysed model
        torch.testing.assert_close(copies.unpruned().state_dict()[name], value, rtol=0, atol=0)
    _, fresh_ctx, fresh = _scores(copy.deepcopy(reference), "l2_norm")
    expected, _ = _apply(_Copies(fresh, example), {group: np.array([0, 2])}, fresh_ctx)
    x = torch.from_numpy(_data().x[:8])
    torch.testing.assert_close(second(x), expected(x), rtol=0, atol=0)


def _zero_gradient_net():
    m = _net()
    with torch.no_grad():
        m.conv2.weight[:, 3].zero_()  # nothing downstream reads channel 3: its gradient is zero
        m.conv1.weight[3] *= 3  # ...though its activations are the largest
    return m


def test_the_pruned_model_keeps_no_gradient_a_signal_left():
    m = _net()
    _, ctx, analysis = _scores(m, "bandit", _data(n=32), kind="macs", target=0.5, bandit_epochs=1, batch_size=16)
    assert any(p.grad is not None for p in m.parameters())  # the bandit's fine-tune left them; else this checks nothing
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    pruned, _, _ = _prune_once(analysis, {group: np.array([0])}, ctx, torch.from_numpy(_data().x[:2]))
    assert all(p.grad is None for p in pruned.parameters())


@pytest.mark.parametrize("signal", ["taylor", "fisher"])
@pytest.mark.parametrize("labels", [True, False])
def test_gradient_signals_see_the_channel_nothing_depends_on(signal, labels):
    s, _, _ = _scores(_zero_gradient_net(), signal, _data(labels=labels))
    assert np.argmin(s) == 3 and s[3] == 0
    assert (s[[0, 1, 2]] > 0).all()


def test_taylor_is_l2_normalised_per_layer():
    s, _, _ = _scores(_zero_gradient_net(), "taylor", _data())
    assert np.isclose(np.linalg.norm(s), 1.0)


def test_fisher_flop_aware_variant_divides_by_cost():
    m = _zero_gradient_net()
    plain, _, _ = _scores(m, "fisher", _data())
    aware, _, analysis = _scores(m, {"compose": {"measure": "activation_gradient", "reduce": "fisher",
                                                 "aggregate": "sum", "normalize": "none", "per_mac": True}}, _data())
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    cost = analysis.channel_macs(group)
    np.testing.assert_allclose(aware, plain / (cost / analysis.mean_channel_macs()), rtol=1e-6)


def _duplicated_net():
    m = _net()
    with torch.no_grad():
        m.conv1.weight[1] = m.conv1.weight[0]
        m.conv1.bias[1] = m.conv1.bias[0]  # channels 0 and 1 carry the same feature map
    return m


def test_similarity_clusters_duplicates_and_folds_one_into_the_other():
    m = _duplicated_net()
    data = _data()
    s, ctx, analysis = _scores(m, "similarity", data)
    assert np.argmin(s) in (0, 1) and ctx.report["similar_channels"] == 1
    group = next(g for g, info in enumerate(analysis.groups) if info.root == "conv1")
    drop = int(np.argmin(s))
    x = torch.from_numpy(data.x[:8])
    pruned, before, _ = _prune_once(analysis, {group: np.array([drop])}, ctx, x)
    torch.testing.assert_close(pruned(x), before, atol=1e-5, rtol=1e-5)  # the merge makes it exact


def test_lasso_enters_the_unused_channel_last():
    s, ctx, _ = _scores(_zero_gradient_net(), "lasso", _data())
    assert np.argmin(s) == 3
    assert ctx.options["reconstruct"] is True


def test_compose_axes_reproduce_a_named_signal():
    m = _net()
    named, _, _ = _scores(m, "l1_norm")
    composed, _, _ = _scores(m, {"compose": {"measure": "weight", "reduce": "l1", "aggregate": "mean",
                                             "normalize": "mean"}})
    np.testing.assert_allclose(named, composed)


def test_bandit_learns_which_channel_is_useless_while_running_fewer_channels():
    m = _zero_gradient_net()
    s, ctx, _ = _scores(m, "bandit", _data(n=256), kind="macs", target=0.5, bandit_epochs=4, batch_size=16,
                        lr=0.001)
    assert np.argmin(s) == 3
    b = ctx.report["bandit"]
    k = math.ceil(b["keep"] * len(s))  # the arms each step ran; the k-th best scores 1, the rest below
    assert np.sort(s)[::-1][k - 1] == pytest.approx(1.0) and (s >= 1 - 1e-9).sum() >= k
    assert b["channel_steps_executed"] < b["channel_steps_dense"]
    assert 0 < b["executed_fraction"] < 1 and b["steps"] == 16  # 64 calibration samples, batch 16, 4 epochs


def test_bandit_without_labels_learns_from_the_original_model():
    """Unlabelled calibration data: the bandit's fine-tune distils from the teacher (the original module, whose
    output is a tensor, not a Teacher's list), with a batch size other than the class count."""
    m = _zero_gradient_net()
    s, ctx, _ = _scores(m, "bandit", _data(n=40, labels=False), kind="macs", target=0.5, bandit_epochs=1,
                        batch_size=5, lr=0.001)
    assert s.shape == (4,) and np.isfinite(s).all() and ctx.report["bandit"]["steps"] == 8


class Residual(nn.Module):
    """stem (3->4) feeds a residual stream through two blocks; each block's inner conv is a plain group.

    Stream channels are lost by stem, b1 (in), b2 (out, added), b3 (in), b4 (out, added), fc (in): 6 layers;
    b1's and b3's output channels by 2 layers each (their conv and the next one)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.b3, self.b4 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b2(torch.relu(self.b1(x)))
        x = x + self.b4(torch.relu(self.b3(x)))
        return self.fc(x.mean((2, 3)))


def _all_scores(model, signal):
    """Scores by group, named "stream" for the group the stem's outputs belong to, else by root layer."""
    model.eval()
    analysis = analyse(model, torch.zeros(1, 3, 8, 8), [])
    ctx = ScoringContext(model=model, analysis=analysis, calibration=None, teacher=model, samples=0,
                         has_batchnorm=False, options={})
    scores = _score(ctx, PruneSpec.model_validate({"signal": signal}))
    names = {g: "stream" if any(t.layer == "stem" for t in info.touches) else info.root
             for g, info in enumerate(analysis.groups)}
    return {names[g]: s for g, s in scores.items()}, analysis


@pytest.mark.parametrize("preset", ["l1_norm", "l2_norm", "fpgm"])
def test_magnitude_scores_grow_with_the_layers_a_channel_leaves(preset):
    torch.manual_seed(0)
    by_root, analysis = _all_scores(Residual(), preset)
    stream, inner = by_root["stream"], by_root["b1"]
    # mean-normalised per group, then times layers/2: the stream's mean is 6/2, a plain group's 2/2
    assert np.isclose(stream.mean(), 3.0) and np.isclose(inner.mean(), 1.0)
    g = next(i for i, info in enumerate(analysis.groups) if any(t.layer == "stem" for t in info.touches))
    assert (analysis.coupled_layers(g) == 6).all()


def test_without_coupling_the_stream_is_ranked_as_one_layer():
    torch.manual_seed(0)
    axes = {"measure": "weight", "reduce": "l2", "aggregate": "mean", "normalize": "mean"}
    by_root, _ = _all_scores(Residual(), {"compose": {**axes, "coupling": "none"}})
    assert np.isclose(by_root["stream"].mean(), 1.0) and np.isclose(by_root["b1"].mean(), 1.0)


def test_per_mac_ranks_across_groups_by_cost():
    """Per-group normalisation must not cancel the FLOP-aware division: the stream's channels cost more
    MACs than the inner ones (6 layers against 2), so per_mac lowers them relative to the inner group."""
    torch.manual_seed(0)
    axes = {"measure": "weight", "reduce": "l2", "aggregate": "mean", "normalize": "mean"}
    plain, analysis = _all_scores(Residual(), {"compose": axes})
    aware, _ = _all_scores(Residual(), {"compose": {**axes, "per_mac": True}})
    ratio_plain = plain["stream"].mean() / plain["b1"].mean()
    ratio_aware = aware["stream"].mean() / aware["b1"].mean()
    g = {("stream" if any(t.layer == "stem" for t in info.touches) else info.root): i
         for i, info in enumerate(analysis.groups)}
    cost_ratio = analysis.channel_macs(g["stream"]).mean() / analysis.channel_macs(g["b1"]).mean()
    assert cost_ratio > 2
    assert np.isclose(ratio_aware, ratio_plain / cost_ratio)


class TwoHeads(nn.Module):
    """A stem feeding class scores (a -> fc) and a sigmoid map (b -> head): b's channels reach the map only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Conv2d(5, 1, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.fc(torch.relu(self.a(s)).mean((2, 3))), torch.sigmoid(self.head(torch.relu(self.b(s))))


def test_gradient_signals_without_labels_score_every_output_by_its_kind():
    """Without labels, Taylor differentiates each output's loss against the original's hardened prediction: the
    channels that reach only the second output (a map) are scored by its gradient. The first output alone, as
    before the kinds were known, leaves them at zero whatever they do."""
    import copy

    from secateurs.pruning.fidelity import OutputKind

    torch.manual_seed(0)
    model = TwoHeads().eval()
    analysis = analyse(model, torch.zeros(1, 3, 8, 8), [])
    kinds = [OutputKind("scores", "classes", None), OutputKind("map", "map", "sigmoid")]

    def b_scores(output_kinds):  # noqa: ANN001, ANN202
        ctx = ScoringContext(model=model, analysis=analysis, calibration=_data(labels=False),
                             teacher=copy.deepcopy(model), samples=64, has_batchnorm=False,
                             output_kinds=output_kinds)
        scores = _score(ctx, PruneSpec.model_validate({"signal": "taylor"}))
        return scores[next(i for i, g in enumerate(analysis.groups) if g.root == "b")]

    assert np.allclose(b_scores(None), 0.0)
    by_kind = b_scores(lambda: kinds)
    assert (by_kind > 0).all() and np.isfinite(by_kind).all()
