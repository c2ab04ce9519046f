"""Known-answer tests of the HARP host: exact global budget, learned rates, S2AP on top."""

import math
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from s2ap.config import ConfigError, PruneConfig, load_run_config
from s2ap.harp import HarpHost, allocate_kept_counts
from s2ap.masking import ScoreMasking, kept_count
from s2ap.perturbation import S2AP
from s2ap.pipeline import Pipeline
from s2ap.stages import make_host
from tests.s2ap.test_pipeline import tiny_config


def harp_pair(seed=0, sparsity=0.6, momentum=0.0, epoch=2, gamma=0.05, **s2ap_kwargs):
    """Two bias-free linear layers (12 and 6 weights) under HARP, an S2AP update and a closure."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    host = HarpHost(alpha=0.1, gamma=gamma)
    masking = ScoreMasking(net, sparsity=sparsity, score_init="random", seed=seed, host=host)
    masking.set_stage("prune")
    opt = torch.optim.SGD(
        [{"params": masking.scores()}, *host.param_groups()], lr=0.5, momentum=momentum
    )
    s2ap_kwargs.setdefault("perturbation", "none")
    update = S2AP(opt, masking.scores(), rho=s2ap_kwargs.pop("rho", 0.0), **s2ap_kwargs)
    torch.manual_seed(100 + seed)
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.randn(5, 2, dtype=torch.float64)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((net(x) - t) ** 2).sum()
        (loss + host.penalty(epoch)).backward()
        return loss.detach()

    return net, masking, host, opt, update, closure, (x, t)


def kept(masking: ScoreMasking) -> list[int]:
    return [int(m.sum()) for m in masking.masks().values()]


def set_rates(host: HarpHost, logits: list[float]) -> None:
    """Write the rate logits the way a checkpoint does (the masks follow at the next use)."""
    logits_t = torch.tensor(logits, dtype=host.logits.dtype)
    host.load_state_dict({"logits": logits_t, "frozen_weight": host.frozen_weight})


# --- the exact budget ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "desired, sizes, budget, expected",
    [
        ([5.0, 5.0, 5.0], [10, 10, 10], 15, [5, 5, 5]),  # already on budget
        ([1.5, 3.5, 5.5], [3, 7, 11], 10, [2, 3, 5]),  # x 10/10.5 = 1.43, 3.33, 5.24; +1 to 1st
        ([100.0, 1.0, 1.0], [4, 10, 10], 12, [4, 4, 4]),  # first capped, rest share the rest
        ([1e-4, 10.0, 10.0], [5, 10, 10], 11, [1, 5, 5]),  # never below one weight
        ([3.0, 3.0, 3.0], [9, 9, 9], 10, [4, 3, 3]),  # a tie goes to the earlier layer
        ([2.0, 2.0], [3, 3], 6, [3, 3]),  # everything
    ],
)
def test_allocation_known_answers(desired, sizes, budget, expected):
    assert allocate_kept_counts(desired, sizes, budget) == expected


def test_allocation_meets_any_feasible_budget_exactly():
    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.choice([1, 2, 3, 7, 9, 64, 75, 1000, 4608]) for _ in range(rng.randint(1, 9))]
        desired = [rng.choice([0.0, 1e-9, 0.3, 1.0, 7.5, 1e6]) * rng.random() for _ in sizes]
        sparsity = rng.choice([0.1, 1 / 3, 0.5, 0.9, 0.99, 0.999])
        budget = kept_count(sum(sizes), sparsity)
        if budget < len(sizes):
            continue
        counts = allocate_kept_counts(desired, sizes, budget)
        assert sum(counts) == budget
        assert all(1 <= k <= n for k, n in zip(counts, sizes))


def test_allocation_refuses_impossible_budgets():
    with pytest.raises(ValueError, match="budget of 1 weights"):
        allocate_kept_counts([1.0, 1.0], [5, 5], 1)
    with pytest.raises(ValueError, match="budget of 11"):
        allocate_kept_counts([1.0, 1.0], [5, 5], 11)


def awkward_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(  # 63, 135, 175 and 13 weights: no sparsity splits them evenly
        nn.Conv2d(1, 7, 3, bias=False),
        nn.Conv2d(7, 5, 2),
        nn.Flatten(),
        nn.Linear(5, 35),
        nn.Linear(13, 1),
    )


@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9, 0.97])
def test_masks_keep_exactly_the_global_budget(sparsity):
    net = awkward_net()
    host = HarpHost()
    masking = ScoreMasking(net, sparsity=sparsity, score_init="random", host=host)
    total = sum(layer.weight.numel() for layer in masking.layers.values())
    budget = round((1 - sparsity) * total)
    for logits in (None, [3.0, -2.0, 0.5, 9.0], [-30.0, -30.0, 30.0, 0.0]):
        if logits is not None:
            set_rates(host, logits)
        counts = kept(masking)
        assert sum(counts) == budget
        assert counts == list(host.kept_counts(masking).values())
        assert all(k >= 1 for k in counts)
        global_sparsity, _ = masking.sparsity_report()
        assert global_sparsity == pytest.approx(1 - budget / total, abs=1e-12)


def test_uniform_start_and_rates_that_favour_one_layer():
    net = awkward_net()
    host = HarpHost(alpha=0.1)
    masking = ScoreMasking(net, sparsity=0.5, host=host)
    torch.testing.assert_close(host.rates(), torch.full((4,), 0.5), check_dtype=False)
    uniform = kept(masking)
    set_rates(host, [0.0, 0.0, 6.0, 0.0])  # the Linear(5, 35) layer asks for all its weights
    favoured = kept(masking)
    assert favoured[2] > uniform[2] and favoured[2] <= 175
    assert all(favoured[i] < uniform[i] for i in (0, 1, 3))


def test_host_refuses_global_scope_and_budgets_below_one_weight_per_layer():
    with pytest.raises(ValueError, match="scope='layer'"):
        ScoreMasking(awkward_net(), sparsity=0.5, scope="global", host=HarpHost())
    with pytest.raises(ValueError, match="lower the sparsity"):
        ScoreMasking(awkward_net(), sparsity=0.995, host=HarpHost())  # keeps 2 of 386
    with pytest.raises(ValueError, match="alpha"):
        HarpHost(alpha=1.0)
    with pytest.raises(ValueError, match="gamma"):
        HarpHost(gamma=math.inf)
    with pytest.raises(ValueError, match="rate_lr"):
        HarpHost(rate_lr=0.0)
    with pytest.raises(ValueError, match="init"):
        HarpHost(init="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate_weight_decay"):
        HarpHost(rate_weight_decay=-1e-4)
    with pytest.raises(ValueError, match="not above the floor"):  # floor 0.5 * 0.5 > 10%
        ScoreMasking(awkward_net(), sparsity=0.5, host=HarpHost(alpha=0.5, init="ten_percent"))


# --- the learned rates ---------------------------------------------------------------------------
def test_one_harp_step_matches_hand_derivation():
    lr, gamma, epoch = 0.5, 0.05, 2
    net, masking, host, _, update, closure, (x, t) = harp_pair(gamma=gamma, epoch=epoch)
    # 18 weights at sparsity 0.6: K = round(7.2) = 7. Uniform rates 0.4 ask for 4.8 and 2.4;
    # scaled onto 7: 4.67 and 2.33; floors 4 + 2, the missing one to the larger remainder.
    assert kept(masking) == [5, 2]
    w = [net[i].weight.detach().numpy().copy() for i in (0, 1)]
    s = [net[i].scores.detach().numpy().copy() for i in (0, 1)]
    r = host.logits.detach().numpy().copy()
    m = [np_top_k(s[0], 5), np_top_k(s[1], 2)]
    e1, e2 = w[0] * m[0], w[1] * m[1]
    xn, tn = x.numpy(), t.numpy()
    h = xn @ e1.T
    dy = h @ e2.T - tn
    d_mask = [((dy @ e2).T @ xn) * w[0], (dy.T @ h) * w[1]]  # dL/dm = dL/d(w*m) * w
    # Rate a = 0.04 + 0.96 * sigmoid(r) starts at 0.4, so sigmoid(r) = 0.375 and
    # da/dr = 0.96 * 0.375 * 0.625 = 0.225. The budget loss is over (7.2 / 7 > 1), so it adds
    # gamma * (epoch + 1) * n_l / K to dL/da_l.
    np.testing.assert_allclose(r, np.log(0.375 / 0.625), rtol=1e-12)
    d_rate = [d.sum() + gamma * (epoch + 1) * n / 7 for d, n in zip(d_mask, (12, 6))]
    expected_r = r - lr * 0.225 * np.array(d_rate)
    expected_s = [si - lr * di * np.sign(si) for si, di in zip(s, d_mask)]

    update.step(closure)
    np.testing.assert_allclose(host.logits.detach().numpy(), expected_r, rtol=1e-10)
    for i in (0, 1):
        np.testing.assert_allclose(net[i].scores.detach().numpy(), expected_s[i], rtol=1e-10)
    assert sum(kept(masking)) == 7


def np_top_k(s: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.abs(s).ravel(), kind="stable")[:k]
    mask = np.zeros(s.size, dtype=bool)
    mask[order] = True
    return mask.reshape(s.shape)


class OnlyA(nn.Module):
    """Three layers; the loss below depends on layer ``a``'s effective weights only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = (
            nn.Linear(6, 5, False),
            nn.Linear(8, 4, False),
            nn.Linear(4, 4, False),
        )

    def loss(self) -> torch.Tensor:
        # a(I) is the effective weight transposed: L = -sum(m * w^2), so dL/dm_a = -w^2 < 0
        return -(self.a(torch.eye(6)) * self.a.weight.detach().T).sum()


def test_rates_move_towards_the_layer_the_loss_needs():
    model = OnlyA()
    host = HarpHost(gamma=0.5)
    masking = ScoreMasking(model, sparsity=0.5, host=host)  # 78 weights, K = 39
    masking.set_stage("prune")
    opt = torch.optim.SGD([{"params": masking.scores()}, *host.param_groups()], lr=0.5)
    start = kept(masking)
    for _ in range(15):
        opt.zero_grad()
        (model.loss() + host.penalty(0)).backward()
        assert host.logits.grad[0] < 0 and host.logits.grad[1] >= 0  # b: only the budget loss
        opt.step()
        assert sum(kept(masking)) == 39
    end = kept(masking)
    assert end[0] > start[0]
    assert end[1] < start[1] and end[2] < start[2]
    rates = host.rates().detach()
    assert rates[0] > 0.5 > max(rates[1], rates[2])


def test_a_step_of_the_rates_alone_reselects_the_masks():
    # Scores frozen (HARP's rate_prune mode): only the rates step, and the masks must follow.
    model = OnlyA()
    host = HarpHost(gamma=0.5)
    masking = ScoreMasking(model, sparsity=0.5, host=host)  # 78 weights, K = 39
    masking.set_stage("prune")
    scores = masking.scores()
    for s in scores:
        s.requires_grad_(False)
    frozen = [(s.clone(), s._version) for s in scores]
    opt = torch.optim.SGD(host.param_groups(), lr=0.5)
    start = kept(masking)
    seen = {tuple(start)}
    for _ in range(15):
        opt.zero_grad()
        (model.loss() + host.penalty(0)).backward()
        assert host.logits.grad[0] < 0  # the rates take a gradient with the scores frozen
        opt.step()
        assert all(torch.equal(s, c) and s._version == v for s, (c, v) in zip(scores, frozen))
        counts = list(host.kept_counts(masking).values())
        rates = host.rates().detach().tolist()
        sizes = [s.numel() for s in scores]
        desired = [a * n for a, n in zip(rates, sizes)]
        assert counts == allocate_kept_counts(desired, sizes, 39)
        # what the next forward pass uses, before anything asks for masks() explicitly
        with torch.no_grad():
            used = [int((layer.masked_weight() != 0).sum()) for layer in masking.layers.values()]
        assert used == counts and sum(counts) == 39
        for layer, k in zip(masking.layers.values(), counts):
            expected = np_top_k(layer.scores.detach().numpy(), k)
            assert np.array_equal(layer.mask.numpy(), expected)
        seen.add(tuple(counts))
    end = kept(masking)
    assert end[0] > start[0] and len(seen) > 2  # the split moved, step by step


def three_layer_net() -> nn.Sequential:
    torch.manual_seed(5)  # 1200 + 6000 + 1000 = 8200 weights
    return nn.Sequential(
        nn.Linear(40, 30, bias=False), nn.Linear(30, 200, bias=False), nn.Linear(200, 5, bias=False)
    )


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_ten_percent_start_keeps_the_exact_budget(sparsity):
    hosts = {init: HarpHost(gamma=1.0, init=init) for init in ("target", "ten_percent")}
    maskings = {
        init: ScoreMasking(three_layer_net(), sparsity=sparsity, host=host)
        for init, host in hosts.items()
    }
    budget = round((1 - sparsity) * 8200)  # 820 or 82
    ref, tgt = hosts["ten_percent"], hosts["target"]
    torch.testing.assert_close(ref.rates(), torch.full((3,), 0.1), check_dtype=False)
    if sparsity == 0.9:  # the two starts coincide (up to 1 - 0.9 != 0.1 in floating point)
        torch.testing.assert_close(ref.logits, tgt.logits)
    else:  # ten times the budget: the budget loss starts at 0.1 * 8200 / 82 - 1 = 9
        assert float(ref.budget_excess().detach()) == pytest.approx(9.0)
        assert float(tgt.budget_excess().detach()) == pytest.approx(0.0, abs=1e-12)
    # The exact split is proportional to a_l * n_l: equal rates give the same first masks.
    first = {init: m.masks() for init, m in maskings.items()}
    assert all(torch.equal(first["target"][n], first["ten_percent"][n]) for n in first["target"])
    assert sum(kept(maskings["ten_percent"])) == budget

    masking = maskings["ten_percent"]
    masking.set_stage("prune")
    opt = torch.optim.SGD([{"params": masking.scores()}, *ref.param_groups()], lr=0.1)
    torch.manual_seed(6)
    x, t = torch.randn(16, 40), torch.randn(16, 5)
    excess = [float(ref.budget_excess().detach())]
    for _ in range(10):
        opt.zero_grad()
        (((masking.model(x) - t) ** 2).mean() + ref.penalty(0)).backward()
        opt.step()
        assert sum(kept(masking)) == budget
        excess.append(float(ref.budget_excess().detach()))
    if sparsity == 0.99:
        assert excess[-1] < excess[0]  # the budget loss pulls the raw rates towards K


def test_rho_zero_is_bit_for_bit_the_plain_harp_update():
    a = harp_pair(seed=4, momentum=0.9, rho=0.0, perturbation="score")
    b = harp_pair(seed=4, momentum=0.9, perturbation="none")
    start = a[2].logits.detach().clone()
    for _ in range(4):
        a[4].step(a[5])
        b[4].step(b[5])
    assert not torch.equal(a[2].logits, start)  # the rates did move
    assert torch.equal(a[2].logits, b[2].logits)
    for pa, pb in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a[3].param_groups[1]["params"], b[3].param_groups[1]["params"]):
        assert torch.equal(a[3].state[pa]["momentum_buffer"], b[3].state[pb]["momentum_buffer"])
    assert all(torch.equal(ma, mb) for ma, mb in zip(a[1].masks().values(), b[1].masks().values()))


def test_s2ap_perturbs_the_scores_not_the_rates():
    net, masking, host, opt, update, closure, _ = harp_pair(seed=1, rho=0.5, perturbation="score")
    assert all(a is b for a, b in zip(update.scores, masking.scores(), strict=True))
    seen = []
    real_closure = closure

    def watching():
        seen.append(host.logits.detach().clone())
        return real_closure()

    update.step(watching)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


# --- the budget loss and the checkpoint ---------------------------------------------------------
def test_budget_loss_weight_grows_each_epoch_then_freezes():
    net = awkward_net()
    host = HarpHost(gamma=0.2)
    masking = ScoreMasking(net, sparsity=0.5, host=host)
    set_rates(host, [4.0, 4.0, 4.0, 4.0])  # every layer asks for ~98%: far over budget
    assert float(host.budget_excess().detach()) > 0.9
    assert host.end_epoch(0)["rate_penalty_weight"] == pytest.approx(0.2)
    assert host.end_epoch(1)["rate_penalty_weight"] == pytest.approx(0.4)
    assert host.frozen_weight is None
    set_rates(host, [-4.0, -4.0, -4.0, -4.0])  # now under budget: the loss is zero
    record = host.end_epoch(2)
    assert record["rate_budget_excess"] == 0.0 and host.frozen_weight == pytest.approx(0.6)
    assert host.penalty_weight(7) == pytest.approx(0.6)
    assert set(record) >= {f"layer_rate/{name}" for name in masking.layers}


def test_state_dict_restores_rates_and_masks():
    net = awkward_net()
    host = HarpHost()
    masking = ScoreMasking(net, sparsity=0.6, score_init="random", host=host)
    set_rates(host, [1.0, -1.0, 2.0, 0.0])
    host.frozen_weight = 0.03
    state = host.state_dict()
    masks = masking.masks()
    set_rates(host, [0.0, 0.0, 0.0, 0.0])
    host.frozen_weight = None
    assert any(not torch.equal(masks[n], m) for n, m in masking.masks().items())
    host.load_state_dict(state)
    assert host.frozen_weight == 0.03
    assert torch.equal(host.logits.detach(), state["logits"])
    assert all(torch.equal(masks[n], m) for n, m in masking.masks().items())
    with pytest.raises(ValueError, match="rates"):
        host.load_state_dict({"logits": torch.zeros(3), "frozen_weight": None})


# --- the configuration and the pipeline ---------------------------------------------------------
@pytest.mark.parametrize(
    "prune, message",
    [
        ("{host: harp, scope: global}", "prune: prune.scope must be 'layer'"),
        ("{host: harpy}", "prune.host:"),
        ("{harp: {gamma: .inf}}", "prune.harp.gamma: must be a finite number"),
        ("{harp: {alpha: 1.0}}", "prune.harp.alpha: must be less than 1"),
        ("{harp: {rate_lr: .nan}}", "prune.harp.rate_lr: must be a finite number"),
        ("{harp: {gama: 0.1}}", "prune.harp.gama: unknown field"),
        ("{harp: {init: uniform}}", "prune.harp.init: Input should be 'target' or 'ten_percent'"),
        ("{harp: {rate_weight_decay: -1}}", "prune.harp.rate_weight_decay: must be at least 0"),
        (
            "{host: harp, sparsity: 0.5, harp: {init: ten_percent, alpha: 0.5}}",
            "prune: prune.harp.init 'ten_percent' starts every layer at 10% kept, not above the "
            "floor prune.harp.alpha * (1 - prune.sparsity) = 0.25",
        ),
    ],
)
def test_config_errors_name_the_harp_fields(tmp_path, prune, message):
    path = tmp_path / "run.yaml"
    path.write_text(f"prune: {prune}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(path)


def test_config_builds_the_host_with_every_harp_field():
    default = make_host(PruneConfig(host="harp"))
    assert isinstance(default, HarpHost) and default.init == "target"
    ScoreMasking(awkward_net(), sparsity=0.5, host=default)
    assert default.param_groups()[0].keys() == {"params"}  # lr and weight decay: the optimizer's
    cfg = PruneConfig(
        host="harp",
        harp={"init": "ten_percent", "rate_weight_decay": 5e-4, "rate_lr": 0.5, "alpha": 0.2},
    )
    host = make_host(cfg)
    assert (host.init, host.alpha, host.rate_lr) == ("ten_percent", 0.2, 0.5)
    ScoreMasking(awkward_net(), sparsity=cfg.sparsity, host=host)
    torch.testing.assert_close(host.rates(), torch.full((4,), 0.1), check_dtype=False)
    group = host.param_groups()[0]
    assert group["weight_decay"] == 5e-4 and group["lr"] == 0.5
    assert PruneConfig(harp={"init": "ten_percent", "alpha": 0.5}, sparsity=0.5)  # hydra: unread


def test_harp_pipeline_keeps_the_budget_and_records_the_rates():
    overrides = {"pretrain.epochs": 0, "finetune.epochs": 1, "validation.hessian_iters": 3}
    cfg = tiny_config(
        **overrides, **{"prune.host": "harp", "prune.harp": {"gamma": 0.1, "rate_lr": 0.5}}
    )
    pipeline = Pipeline(cfg)
    records = pipeline.run()
    masking = pipeline.masking
    assert isinstance(masking.host, HarpHost)
    total = sum(layer.weight.numel() for layer in masking.layers.values())
    exact = 1 - round(0.2 * total) / total
    prune = [r for r in records if r["phase"] == "prune"]
    for r in prune:
        assert r["sparsity"] == pytest.approx(exact, abs=1e-12)
        for name in masking.layers:
            assert 0.0 <= r[f"layer_sparsity/{name}"] < 1.0
            assert 0.0 < r[f"layer_rate/{name}"] < 1.0
    assert prune[0]["rate_penalty_weight"] == pytest.approx(0.1)
    assert len({prune[-1][f"layer_rate/{n}"] for n in masking.layers}) > 1  # no longer uniform
    masks = pipeline.selected_masks()
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    assert all(torch.equal(pipeline.prune_masks[k], v) for k, v in masks.items())
