"""The GPU-ready paths (``compute:``), checked on the CPU against the default float32 path."""

import copy

import pytest
import torch
from torch import nn

from s2ap.compute import Compute
from s2ap.config import RunConfig
from s2ap.masking import ScoreMasking
from s2ap.models import create_model
from s2ap.pipeline import Pipeline, load_data

# bfloat16 keeps 8 significant bits (float32: 24). On this tiny model the bf16 loss is within
# 1e-4 of the float32 one and every layer's score gradient within cosine 0.995; the bounds
# below leave room for other seeds and models without letting a real error through (a wrong
# gradient has a cosine near 0, a wrong cast a loss off by far more than 1%).
BF16_LOSS_RTOL = 1e-2
BF16_GRAD_COSINE = 0.98


def masked_model(compute: Compute, seed: int = 0) -> tuple[nn.Module, ScoreMasking]:
    torch.manual_seed(seed)
    model = create_model(
        "small_cnn", num_classes=4, in_channels=3, image_size=8, mean=[0.5] * 3, std=[0.25] * 3
    )
    compute.prepare(model)
    masking = ScoreMasking(model, sparsity=0.7)
    masking.set_stage("prune")
    model.train()
    return model, masking


def loss_and_score_grads(compute: Compute, x: torch.Tensor, y: torch.Tensor):
    model, masking = masked_model(compute)
    with compute.autocast(x.device):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [s.grad.clone() for s in masking.scores()]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def test_channels_last_equals_default_within_fp32_tolerance(batch):
    x, y = batch
    ref_loss, ref_grads = loss_and_score_grads(Compute(), x, y)
    loss, grads = loss_and_score_grads(Compute(channels_last=True), x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-7)


def test_channels_last_stores_weights_scores_and_masks_nhwc_exports_nchw():
    model, masking = masked_model(Compute(channels_last=True))
    conv = masking.layers["features.0"]
    for t in (conv.weight, conv.scores, conv.mask):
        assert t.is_contiguous(memory_format=torch.channels_last)
        assert not t.is_contiguous()
    assert all(m.is_contiguous() for m in masking.masks().values())
    _, reference = masked_model(Compute())
    for name, mask in reference.masks().items():  # the same selection, in logical order
        assert torch.equal(masking.masks()[name], mask)


def test_bf16_autocast_is_close_to_fp32(batch):
    x, y = batch
    ref_loss, ref_grads = loss_and_score_grads(Compute(), x, y)
    loss, grads = loss_and_score_grads(Compute(amp="bf16"), x, y)
    assert loss.dtype == torch.float32  # autocast keeps the loss in float32
    assert float((loss - ref_loss).abs() / ref_loss) < BF16_LOSS_RTOL
    for g, ref in zip(grads, ref_grads):
        assert g.dtype == torch.float32  # the scores and their gradients stay float32
        cosine = float((g * ref).sum() / (g.norm() * ref.norm()))
        assert cosine > BF16_GRAD_COSINE


def test_bf16_autocast_really_runs_in_bf16(batch):
    x, _ = batch
    model, _ = masked_model(Compute(amp="bf16"))
    seen = []
    model.features[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with Compute(amp="bf16").autocast(x.device):
        model(x)
    with Compute().autocast(x.device):
        model(x)
    assert seen == [torch.bfloat16, torch.float32]


def test_compile_equals_eager(batch):
    """torch.compile through dynamo and AOT autograd; ``aot_eager`` skips the code generation
    (inductor takes ~50 s to build the kernels on this CPU) but traces the same graphs, with
    the graph breaks at the masked layers' weight selection."""
    x, y = batch
    compiled = Compute(compile=True, compile_backend="aot_eager")
    for training in (True, False):
        ref_model, ref_masking = masked_model(Compute())
        model, masking = masked_model(compiled)
        ref_model.train(training), model.train(training)
        out_ref, out = ref_model(x), model(x)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        nn.functional.cross_entropy(out_ref, y).backward()
        nn.functional.cross_entropy(out, y).backward()
        for s, ref in zip(masking.scores(), ref_masking.scores()):
            torch.testing.assert_close(s.grad, ref.grad, rtol=1e-4, atol=1e-7)
    # The mask cache still works under compile: new scores, new mask, new output.
    with torch.no_grad():
        for s in masking.scores():
            s.copy_(torch.randn_like(s))
    assert not torch.equal(model(x), out)
    assert model._compiled_call_impl is not None  # compiled in place: same module, same keys
    assert set(model.state_dict()) == set(ref_model.state_dict())


def tiny_run(pretrain_epochs: int = 1, **compute) -> RunConfig:
    return RunConfig.model_validate(
        {
            "device": "cpu",
            "data": {
                "source": "synthetic",
                "val_size": 16,
                "batch_size": 32,
                "augment": "none",
                "options": {"n_train": 80, "n_test": 16, "num_classes": 4, "image_size": 8},
            },
            "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2},
            "pretrain": {"epochs": pretrain_epochs, "lr": 0.05},
            "prune": {"epochs": 1, "sparsity": 0.8, "rho": 0.2, "warmup_epochs": 0},
            "finetune": {"epochs": 1, "awp": {"enabled": True, "gamma": 0.01}},
            "validation": {"pgd_steps": 1, "sharpness_examples": 16, "hessian_iters": 0},
            "evaluate": {"n_examples": 16, "pgd_steps": 1, "autoattack": False},
            "compute": compute,
        }
    )


def test_channels_last_pipeline_equals_default_pipeline():
    """S2AP prune and AWP finetune: the same records, scores and masks."""
    data = load_data(tiny_run())
    runs = {}
    for name, compute in {"default": {}, "channels_last": {"channels_last": True}}.items():
        pipeline = Pipeline(tiny_run(pretrain_epochs=0, **compute), data=data)
        runs[name] = (pipeline.run(), pipeline)
    (ref_records, ref), (records, pipeline) = runs["default"], runs["channels_last"]
    for a, b in zip(records, ref_records):
        for key in ("train_robust_loss", "val_clean_acc", "val_robust_acc", "sharpness"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert all(torch.equal(pipeline.masks()[k], m) for k, m in ref.masks().items())
    state, ref_state = pipeline.selected_dense_state_dict(), ref.selected_dense_state_dict()
    for key, value in ref_state.items():
        assert state[key].is_contiguous()  # safetensors-ready
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-6)


def test_bf16_pipeline_runs_every_stage():
    records = Pipeline(tiny_run(amp="bf16")).run()
    assert [r["phase"] for r in records] == ["pretrain", "prune", "finetune"]
    for r in records:
        assert torch.isfinite(torch.tensor(r["train_robust_loss"]))
        assert r["images_per_s"] > 0


def test_compute_refuses_unknown_amp():
    with pytest.raises(ValueError, match="amp"):
        Compute(amp="fp16")


def test_prepare_is_in_place_and_keeps_parameters():
    model, _ = masked_model(Compute())
    params = {n: id(p) for n, p in model.named_parameters()}
    again = Compute(channels_last=True).prepare(model)
    assert again is model
    assert params == {n: id(p) for n, p in model.named_parameters()}
    assert copy.deepcopy(model).features[0].weight.is_contiguous(memory_format=torch.channels_last)
