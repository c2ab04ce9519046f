import math

import pytest
import torch
from torch import nn

import s2ap.masking as masking_mod
from s2ap.masking import (
    MaskedConv2d,
    MaskedLinear,
    ScoreMasking,
    apply_masks_to_state_dict,
    effective_weights,
    kept_count,
)
from s2ap.perturbation import scores_perturbed


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    )


@pytest.fixture
def counted_topk(monkeypatch):
    """Count real top-k selections (a spy that calls the real function)."""
    calls = {"n": 0}
    real = masking_mod._top_k_mask

    def spy(magnitudes, k):
        calls["n"] += 1
        return real(magnitudes, k)

    monkeypatch.setattr(masking_mod, "_top_k_mask", spy)
    return calls


def test_conversion_keeps_dense_weights_and_adds_scores():
    net = tiny_net()
    weights = {n: m.weight for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    masking = ScoreMasking(net, sparsity=0.5)
    assert set(masking.layers) == {"0", "3", "7"}
    assert isinstance(net[0], MaskedConv2d) and isinstance(net[7], MaskedLinear)
    for name, layer in masking.layers.items():
        assert layer.weight is weights[name]  # the same parameter, not a copy
        assert layer.scores.shape == layer.weight.shape


def test_include_exclude_patterns_select_layers():
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.5, exclude=["7"])
    assert set(masking.layers) == {"0", "3"}
    assert type(net[7]) is nn.Linear
    with pytest.raises(ValueError, match="no prunable"):
        ScoreMasking(tiny_net(), sparsity=0.5, include=["nothing*"])


def test_scaled_init_is_hydra_formula_and_first_mask_is_magnitude_pruning():
    net = tiny_net()
    w = net[3].weight.detach().clone()
    masking = ScoreMasking(net, sparsity=0.7, score_init="scaled")
    fan_in = w[0].numel()
    expected = math.sqrt(6 / fan_in) * w / w.abs().max()
    torch.testing.assert_close(net[3].scores.detach(), expected)
    k = kept_count(w.numel(), 0.7)
    top = torch.argsort(w.abs().flatten(), descending=True, stable=True)[:k]
    magnitude_mask = torch.zeros(w.numel(), dtype=torch.bool)
    magnitude_mask[top] = True
    assert torch.equal(masking.masks()["3"].flatten(), magnitude_mask)


@pytest.mark.parametrize("init", ["magnitude", "random"])
def test_other_inits(init):
    net = tiny_net()
    ScoreMasking(net, sparsity=0.5, score_init=init, seed=3)
    s = net[0].scores.detach()
    if init == "magnitude":
        torch.testing.assert_close(s, net[0].weight.detach().abs())
    else:
        again = tiny_net()
        ScoreMasking(again, sparsity=0.5, score_init=init, seed=3)
        assert torch.equal(s, again[0].scores.detach())  # seeded
        assert not torch.equal(s.abs(), net[0].weight.detach().abs())


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.95, 0.99])
def test_exact_sparsity_per_layer(sparsity):
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=sparsity, scope="layer")
    masks = masking.masks()
    for name, layer in masking.layers.items():
        n = layer.weight.numel()
        assert int(masks[name].sum()) == max(1, round((1 - sparsity) * n))
    global_sparsity, per_layer = masking.sparsity_report()
    assert per_layer["0"] == pytest.approx(1 - int(masks["0"].sum()) / masks["0"].numel())
    assert 0 < global_sparsity < 1


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_exact_sparsity_global_scope(sparsity):
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=sparsity, scope="global")
    masks = masking.masks()
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * total)


def test_global_scope_ranks_across_layers():
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    masking = ScoreMasking(net, sparsity=0.5, scope="global")
    with torch.no_grad():
        net[0].scores.fill_(2.0)
        net[1].scores.fill_(1.0)
    masks = masking.masks()
    assert masks["0"].all() and not masks["1"].any()


def test_ties_are_broken_deterministically_by_index():
    net = nn.Sequential(nn.Linear(10, 1, bias=False))
    masking = ScoreMasking(net, sparsity=0.7)
    with torch.no_grad():
        net[0].scores.fill_(0.5)
    mask = masking.masks()["0"].flatten()
    assert mask.tolist() == [True] * 3 + [False] * 7


def test_straight_through_gradient():
    net = nn.Sequential(nn.Linear(6, 3))
    masking = ScoreMasking(net, sparsity=0.5)
    masking.set_stage("prune")
    layer = net[0]
    x = torch.randn(4, 6)
    out = net(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    # dL/d(w*m) for a linear layer is upstream^T x
    grad_effective = upstream.T @ x
    expected = grad_effective * layer.weight.detach() * torch.sign(layer.scores.detach())
    torch.testing.assert_close(layer.scores.grad, expected)
    assert layer.weight.grad is None  # weights frozen while pruning


def test_mask_is_cached_across_forward_passes(counted_topk):
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.5)
    masking.set_stage("prune")
    x = torch.rand(2, 1, 8, 8)
    net(x)
    counted_topk["n"] = 0
    for _ in range(11):  # PGD-10: 11 passes with unchanged scores
        net(x).sum().backward()
    with effective_weights():
        net(x)
    assert counted_topk["n"] == 0


def test_invalidate_names_reselects_only_those_layers(counted_topk):
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.5)
    masking.set_stage("prune")
    x = torch.rand(2, 1, 8, 8)
    net(x)
    first = next(iter(masking.layers))
    counted_topk["n"] = 0
    masking.invalidate([first])
    net(x)
    assert counted_topk["n"] == 1
    masking.invalidate()
    net(x)
    assert counted_topk["n"] == 1 + len(masking.layers)


def _mask_of(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = kept_count(scores.numel(), sparsity)
    order = torch.argsort(scores.abs().flatten(), descending=True, stable=True)[:k]
    m = torch.zeros(scores.numel(), dtype=torch.bool)
    m[order] = True
    return m.view_as(scores)


def test_cache_invalidated_by_every_kind_of_score_change(counted_topk):
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.6)
    masking.set_stage("prune")
    x = torch.rand(3, 1, 8, 8)
    opt = torch.optim.SGD(masking.scores(), lr=10.0)

    def used_mask_is_current() -> bool:
        net(x)
        return all(
            torch.equal(layer.mask, _mask_of(layer.scores.detach(), 0.6))
            for layer in masking.layers.values()
        )

    # optimizer step
    net(x).sum().backward()
    before = masking.masks()
    opt.step()
    n = counted_topk["n"]
    assert used_mask_is_current() and counted_topk["n"] > n
    assert any(not torch.equal(before[k], v) for k, v in masking.masks().items())

    # perturbation and exact restore
    original = masking.masks()
    z = [torch.randn_like(s) * 10 for s in masking.scores()]
    with scores_perturbed(masking.scores(), z):
        assert used_mask_is_current()
        assert any(not torch.equal(original[k], v) for k, v in masking.masks().items())
    assert used_mask_is_current()
    assert all(torch.equal(original[k], v) for k, v in masking.masks().items())

    # load_state_dict
    other = tiny_net()
    other_masking = ScoreMasking(other, sparsity=0.6, score_init="random", seed=7)
    net.load_state_dict(other.state_dict())
    assert used_mask_is_current()
    assert all(torch.equal(other_masking.masks()[k], v) for k, v in masking.masks().items())


def test_stage_switches():
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.5)
    masking.set_stage("prune", bn_trainable=True)
    assert all(s.requires_grad for s in masking.scores())
    assert not net[0].weight.requires_grad and not net[3].bias.requires_grad
    assert net[1].weight.requires_grad and net[1].bias.requires_grad
    masking.set_stage("prune", bn_trainable=False)
    assert not net[1].weight.requires_grad

    masking.set_stage("finetune")
    frozen = masking.masks()
    assert not any(s.requires_grad for s in masking.scores())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.endswith("scores"))
    with torch.no_grad():  # scores moving must not move a frozen mask
        for s in masking.scores():
            s.copy_(torch.randn_like(s))
    x = torch.rand(2, 1, 8, 8)
    net(x).sum().backward()
    assert all(torch.equal(frozen[k], v) for k, v in masking.masks().items())
    for name, layer in masking.layers.items():  # pruned weights get no gradient
        assert (layer.weight.grad[~frozen[name]] == 0).all()


def test_export_to_plain_dense_model_loads_without_s2ap():
    net = tiny_net()
    masking = ScoreMasking(net, sparsity=0.8)
    net.eval()
    dense = masking.to_dense().eval()
    assert not any(isinstance(m, MaskedConv2d | MaskedLinear) for m in dense.modules())
    plain = tiny_net()
    plain.load_state_dict(dense.state_dict(), strict=True)  # the unmasked architecture
    plain.eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x))
    masks = masking.masks()
    for name in masks:
        w = dict(plain.named_modules())[name].weight
        assert (w[~masks[name]] == 0).all()


def test_masks_export_import_and_validation():
    a, b = tiny_net(), tiny_net()
    ma = ScoreMasking(a, sparsity=0.5, score_init="random", seed=1)
    mb = ScoreMasking(b, sparsity=0.5, score_init="random", seed=2)
    exported = ma.masks()
    assert all(m.dtype == torch.bool for m in exported.values())
    mb.load_masks(exported)
    assert all(torch.equal(exported[k], v) for k, v in mb.masks().items())
    x = torch.rand(2, 1, 8, 8)
    a.eval(), b.eval()
    with torch.no_grad():
        weights_only = {
            k: v
            for k, v in a.state_dict().items()
            if not k.endswith(("scores", "mask", "_extra_state"))
        }
        b.load_state_dict(weights_only, strict=False)
        torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="missing"):
        mb.load_masks({"0": exported["0"]})
    bad = dict(exported)
    bad["7"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        mb.load_masks(bad)


def test_apply_masks_to_state_dict():
    net = tiny_net()
    masking = ScoreMasking(tiny_net(), sparsity=0.5)
    masks = masking.masks()
    out = apply_masks_to_state_dict(net.state_dict(), masks)
    assert (out["0.weight"][~masks["0"]] == 0).all()
    torch.testing.assert_close(
        out["0.weight"][masks["0"]], net.state_dict()["0.weight"][masks["0"]]
    )
    with pytest.raises(ValueError, match="no weight"):
        apply_masks_to_state_dict({}, masks)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        ScoreMasking(tiny_net(), sparsity=1.0)
    with pytest.raises(ValueError, match="scope"):
        ScoreMasking(tiny_net(), sparsity=0.5, scope="block")
    net = tiny_net()
    ScoreMasking(net, sparsity=0.5)
    with pytest.raises(ValueError, match="already masked"):
        ScoreMasking(net, sparsity=0.5)


@pytest.mark.parametrize(
    "select", [masking_mod.kth_largest_by_sort, masking_mod.kth_largest_by_selection]
)
def test_threshold_selection_gives_the_stable_sort_mask(monkeypatch, select):
    """Both selectors (sort on CUDA, kthvalue on the CPU) give the mask of a stable descending
    argsort cut at k, ties and all."""
    monkeypatch.setitem(masking_mod.THRESHOLD_SELECTORS, "cpu", select)
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 200, (1,), generator=g))
        if trial % 2:  # few distinct values: many ties at the threshold
            levels = int(torch.randint(1, 5, (1,), generator=g))
            magnitudes = torch.randint(0, levels, (n,), generator=g).float()
        else:
            magnitudes = torch.rand(n, generator=g)
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        expected = _mask_of(magnitudes, 1 - k / n)
        assert int(expected.sum()) == k
        assert torch.equal(masking_mod._top_k_mask(magnitudes, k), expected), (trial, n, k)


def test_mask_selection_is_in_logical_order_for_channels_last_scores():
    scores = torch.randn(4, 3, 3, 3)
    nhwc = scores.contiguous(memory_format=torch.channels_last)
    k = kept_count(scores.numel(), 0.7)
    assert torch.equal(masking_mod._top_k_mask(nhwc.abs(), k), _mask_of(scores, 0.7))
