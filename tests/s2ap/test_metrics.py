import pytest
import torch
from torch import nn

from s2ap import metrics
from s2ap.adversarial import AttackSettings, PGDObjective, TradesObjective
from s2ap.masking import ScoreMasking


def test_mask_hamming_known_answer():
    a = {"x": torch.tensor([True, True, False, False]), "y": torch.ones(2, 3, dtype=torch.bool)}
    b = {"x": torch.tensor([True, False, True, False]), "y": torch.ones(2, 3, dtype=torch.bool)}
    b["y"][0, 0] = False
    overall, per_layer = metrics.mask_hamming(a, b)
    assert per_layer == {"x": 0.5, "y": pytest.approx(1 / 6)}
    assert overall == pytest.approx(3 / 10)
    assert metrics.mask_hamming(a, a)[0] == 0.0
    with pytest.raises(ValueError, match="different layers"):
        metrics.mask_hamming(a, {"x": a["x"]})


def test_hessian_top_eigenvalue_of_known_quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    eigenvalues = torch.tensor([9.0, 4.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ q.T
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def loss():
        return 0.5 * x @ a @ x

    top = metrics.hessian_top_eigenvalue(loss, [x], iters=200, tol=1e-10)
    assert top == pytest.approx(9.0, rel=1e-6)


def test_hessian_through_the_straight_through_estimator():
    # L = 0.5||(w*m) x - t||^2; through the STE, H_s = D A D with D = diag(w * sign(s)).
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 2, bias=False)).double()
    masking = ScoreMasking(net, sparsity=0.5, score_init="random", seed=1)
    masking.set_stage("prune")
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.randn(4, 2, dtype=torch.float64)

    def loss():
        return 0.5 * ((net(x) - t) ** 2).sum()

    layer = net[0]
    mask = layer.mask.double()
    w = layer.weight.detach()

    def loss_of_effective(e):
        return 0.5 * ((x @ e.view(2, 3).T - t) ** 2).sum()

    a = torch.autograd.functional.hessian(loss_of_effective, (w * mask).flatten())
    d = torch.diag((w * torch.sign(layer.scores.detach())).flatten())
    expected = torch.linalg.eigvalsh(d @ a @ d).abs().max()
    got = metrics.hessian_top_eigenvalue(loss, masking.scores(), iters=300, tol=1e-12)
    assert got == pytest.approx(float(expected), rel=1e-5)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


def synthetic(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    centers = torch.rand(10, 1, 4, 4, generator=g)
    x = (centers[y] + 0.1 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1)
    return x, y


def trained_model():
    model = small_model()
    x, y = synthetic()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_sharpness_restores_scores_and_is_zero_at_zero_radius():
    model, x, y = trained_model()
    masking = ScoreMasking(model, sparsity=0.5)
    masking.set_stage("prune")
    before = [s.detach().clone() for s in masking.scores()]

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    sharp = metrics.score_sharpness(masking, loss_fn, rho=0.5)
    assert sharp > 0  # the ascent direction increases the loss
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, masking.scores()))
    assert all(s.grad is None for s in masking.scores())
    assert metrics.score_sharpness(masking, loss_fn, rho=1e-12) == pytest.approx(0.0, abs=1e-6)


def test_accuracy_pgd_and_autoattack_order():
    model, x, y = trained_model()
    model.eval()
    settings = AttackSettings(eps=0.2, step_size=0.05, steps=10)
    clean = metrics.accuracy(model, [(x, y)])
    pgd = metrics.robust_accuracy(model, [(x, y)], settings)
    aa = metrics.autoattack_accuracy(model, x[:32], y[:32], eps=0.2, num_classes=10, seed=0)
    aa_again = metrics.autoattack_accuracy(model, x[:32], y[:32], eps=0.2, num_classes=10, seed=0)
    assert clean > 0.9
    assert pgd < clean
    assert aa <= clean and aa == aa_again


@pytest.mark.parametrize("objective", [PGDObjective, TradesObjective])
def test_adversarial_examples_stay_in_the_threat_model_and_raise_the_loss(objective):
    model, x, y = trained_model()
    settings = AttackSettings(eps=0.1, step_size=0.025, steps=5)
    obj = objective(model, settings)
    model.train()
    x_adv = obj.examples(x, y)
    assert model.training  # restored after the attack
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        clean_loss = nn.functional.cross_entropy(model(x), y)
        adv_loss = nn.functional.cross_entropy(model(x_adv), y)
    assert adv_loss > clean_loss
    loss = obj.loss(model, x, x_adv, y)
    loss.backward()
    assert loss.requires_grad and next(model.parameters()).grad is not None
