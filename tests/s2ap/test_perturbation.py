"""Known-answer tests of the S2AP update, computed by hand on tiny models."""

import numpy as np
import pytest
import torch
from torch import nn

from s2ap.masking import ScoreMasking, kept_count
from s2ap.perturbation import S2AP, ascent_perturbation, random_perturbation, scores_perturbed


def linear_pair(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()


def make(seed: int = 0, sparsity: float = 0.5, momentum: float = 0.0, **kwargs):
    kwargs.setdefault("rho", 0.1)
    net = linear_pair(seed)
    masking = ScoreMasking(net, sparsity=sparsity, score_init="random", seed=seed)
    masking.set_stage("prune")
    opt = torch.optim.SGD(masking.scores(), lr=0.5, momentum=momentum)
    update = S2AP(opt, masking.scores(), **kwargs)
    torch.manual_seed(100 + seed)
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.randn(5, 2, dtype=torch.float64)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((net(x) - t) ** 2).sum()
        loss.backward()
        return loss.detach()

    return net, masking, opt, update, closure, calls, (x, t)


def np_mask(s: np.ndarray, sparsity: float) -> np.ndarray:
    k = kept_count(s.size, sparsity)
    order = np.argsort(-np.abs(s).ravel(), kind="stable")[:k]
    m = np.zeros(s.size, dtype=bool)
    m[order] = True
    return m.reshape(s.shape)


def np_score_grads(w1, w2, s1, s2, x, t, sparsity):
    """STE gradients of 0.5||W2e W1e x - t||^2 w.r.t. the scores, by hand."""
    m1, m2 = np_mask(s1, sparsity), np_mask(s2, sparsity)
    e1, e2 = w1 * m1, w2 * m2
    h = x @ e1.T  # [n,3]
    y = h @ e2.T  # [n,2]
    dy = y - t
    d_e2 = dy.T @ h
    d_e1 = (dy @ e2).T @ x
    return d_e1 * w1 * np.sign(s1), d_e2 * w2 * np.sign(s2)


def test_one_s2ap_step_matches_hand_derivation():
    rho, lr, sp = 0.3, 0.5, 0.5
    net, masking, opt, update, closure, _, (x, t) = make(rho=rho, ascent_steps=1, sparsity=sp)
    w1, w2 = (net[i].weight.detach().numpy().copy() for i in (0, 1))
    s1, s2 = (net[i].scores.detach().numpy().copy() for i in (0, 1))
    xn, tn = x.numpy(), t.numpy()

    g1, g2 = np_score_grads(w1, w2, s1, s2, xn, tn, sp)
    z1 = rho * np.linalg.norm(s1) * g1 / np.linalg.norm(g1)
    z2 = rho * np.linalg.norm(s2) * g2 / np.linalg.norm(g2)
    gp1, gp2 = np_score_grads(w1, w2, s1 + z1, s2 + z2, xn, tn, sp)
    expected = (s1 - lr * gp1, s2 - lr * gp2)

    update.step(closure)
    np.testing.assert_allclose(net[0].scores.detach().numpy(), expected[0], rtol=1e-10)
    np.testing.assert_allclose(net[1].scores.detach().numpy(), expected[1], rtol=1e-10)


@pytest.mark.parametrize("radius", ["relative", "absolute"])
def test_perturbation_norm_equals_radius(radius):
    net, masking, _, _, closure, _, _ = make()
    closure()
    scores = masking.scores()
    z = ascent_perturbation(scores, closure, rho=0.2, radius=radius, ascent_steps=1)
    if radius == "relative":
        for zi, s in zip(z, scores):
            assert float(zi.norm()) == pytest.approx(0.2 * float(s.detach().norm()), rel=1e-9)
    else:
        total = float(torch.sqrt(sum((zi**2).sum() for zi in z)))
        assert total == pytest.approx(0.2, rel=1e-9)


@pytest.mark.parametrize("steps", [2, 3, 5])
@pytest.mark.parametrize("radius", ["relative", "absolute"])
def test_multi_step_ascent_never_leaves_the_ball(steps, radius):
    net, masking, _, _, closure, calls, _ = make(seed=4, sparsity=0.3)
    closure()
    scores = masking.scores()
    before = [s.detach().clone() for s in scores]
    calls["n"] = 0
    z = ascent_perturbation(scores, closure, rho=0.5, radius=radius, ascent_steps=steps)
    assert calls["n"] == steps - 1  # step one reuses the host gradient
    if radius == "relative":
        for zi, s in zip(z, scores):
            assert float(zi.norm()) <= 0.5 * float(s.detach().norm()) * (1 + 1e-9)
    else:
        assert float(torch.sqrt(sum((zi**2).sum() for zi in z))) <= 0.5 * (1 + 1e-9)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, scores))  # restored


def test_rho_zero_is_bit_for_bit_the_host_update():
    net_a, _, _, upd_a, clo_a, _, _ = make(seed=2, momentum=0.9, rho=0.0, perturbation="score")
    net_b, _, _, upd_b, clo_b, _, _ = make(seed=2, momentum=0.9, rho=0.0, perturbation="none")
    for _ in range(3):
        upd_a.step(clo_a)
        upd_b.step(clo_b)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(a, b)


def test_optimizer_state_untouched_by_ascent():
    # Momentum after one S2AP step must equal the gradient at s+z: the buffer saw one step only.
    net, masking, opt, update, closure, calls, _ = make(
        seed=1, momentum=0.9, rho=0.2, ascent_steps=3
    )
    steps = {"n": 0}
    real_step = opt.step

    def counting_step(*a, **k):
        steps["n"] += 1
        return real_step(*a, **k)

    opt.step = counting_step
    scores = masking.scores()
    closure()
    z = ascent_perturbation(scores, closure, rho=0.2, radius="relative", ascent_steps=3)
    with scores_perturbed(scores, z):
        closure()
        grad_at_perturbed = [s.grad.detach().clone() for s in scores]
    calls["n"] = 0
    update.step(closure)
    assert steps["n"] == 1 and calls["n"] == 1 + 3
    for s, g in zip(scores, grad_at_perturbed):
        torch.testing.assert_close(opt.state[s]["momentum_buffer"], g)


def test_warmup_uses_host_updates_first():
    _, _, _, update, closure, calls, _ = make(rho=0.1, ascent_steps=2, warmup_epochs=2)
    for epoch, expected_calls in [(0, 1), (1, 1), (2, 3), (5, 3)]:
        update.set_epoch(epoch)
        calls["n"] = 0
        update.step(closure)
        assert calls["n"] == expected_calls, epoch


def test_random_perturbation_same_norm_other_direction():
    net, masking, _, _, closure, _, _ = make(seed=3)
    closure()
    scores = masking.scores()
    grads = [s.grad.clone() for s in scores]
    g = torch.Generator().manual_seed(0)
    z = random_perturbation(scores, rho=0.25, radius="relative", generator=g)
    for zi, s, gi in zip(z, scores, grads):
        assert float(zi.norm()) == pytest.approx(0.25 * float(s.detach().norm()), rel=1e-9)
        cos = float((zi * gi).sum() / (zi.norm() * gi.norm()))
        assert abs(cos) < 0.99
    _, _, _, update, closure, calls, _ = make(seed=3, rho=0.25, perturbation="random")
    update.step(closure)
    assert calls["n"] == 2  # same budget as one ascent step


def test_invalid_arguments():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        S2AP(opt, [], rho=-1.0)
    with pytest.raises(ValueError, match="ascent_steps"):
        S2AP(opt, [], rho=0.1, ascent_steps=0)
    with pytest.raises(ValueError, match="perturbation"):
        S2AP(opt, [], rho=0.1, perturbation="sam")
    with pytest.raises(ValueError, match="radius"):
        S2AP(opt, [], rho=0.1, radius="layer")


def test_state_dict_round_trip():
    _, _, _, a, clo_a, _, _ = make(seed=5, momentum=0.9, rho=0.1, perturbation="random")
    a.step(clo_a)
    state = a.state_dict()
    draw = torch.randn(3, generator=a.generator)
    a.load_state_dict(state)
    assert torch.equal(draw, torch.randn(3, generator=a.generator))
