import io

import pytest
import torch

from s2ap.config import ConfigError, RunConfig, load_run_config
from s2ap.models import create_model
from s2ap.pipeline import Pipeline, load_data


def tiny_config(**overrides) -> RunConfig:
    raw = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {
            "source": "synthetic",
            "val_size": 64,
            "batch_size": 64,
            "options": {
                "n_train": 256,
                "n_test": 64,
                "num_classes": 4,
                "channels": 1,
                "image_size": 8,
            },
        },
        "model": {"arch": "small_cnn"},
        "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2},
        "pretrain": {"epochs": 2, "lr": 0.05},
        "prune": {"epochs": 3, "sparsity": 0.8, "rho": 0.2, "warmup_epochs": 1, "ascent_steps": 2},
        "finetune": {"epochs": 2, "lr": 0.01, "awp": {"enabled": True, "gamma": 0.01}},
        "validation": {"pgd_steps": 2, "sharpness_examples": 32},
        # AutoAttack is exercised in test_metrics (it takes ~30 s even on 16 examples here).
        "evaluate": {"n_examples": 64, "pgd_steps": 3, "autoattack": False},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        raw.setdefault(section, {})[field] = value
    return RunConfig.model_validate(raw)


def test_whole_pipeline_on_synthetic_data():
    cfg = tiny_config()
    pipeline = Pipeline(cfg)
    records = pipeline.run()
    assert [r["phase"] for r in records] == ["pretrain"] * 2 + ["prune"] * 3 + ["finetune"] * 2
    assert [r["epoch"] for r in records] == list(range(1, 8))
    prune = [r for r in records if r["phase"] == "prune"]
    assert [r["perturbing"] for r in prune] == [0.0, 1.0, 1.0]  # one warm-up epoch
    for r in prune:
        assert 0.0 <= r["mask_hamming"] <= 1.0
        assert r["sparsity"] == pytest.approx(0.8, abs=0.01)
        assert any(k.startswith("mask_hamming/") for k in r)
        assert r["images_per_s"] > 0 and r["epoch_time_s"] > 0
    assert records[-1]["done"] and pipeline.done
    test = pipeline.evaluate_test()
    assert set(test) >= {"test_clean_acc", "test_pgd_acc"}
    assert test["test_pgd_acc"] <= test["test_clean_acc"]

    masks = pipeline.selected_masks()
    dense = pipeline.selected_dense_state_dict()
    plain = create_model(
        "small_cnn", num_classes=4, in_channels=1, image_size=8, mean=[0.5], std=[0.25]
    )
    plain.load_state_dict(dense)  # the unmasked architecture
    kept = sum(int(m.sum()) for m in masks.values())
    nonzero = sum(int((dense[f"{n}.weight"] != 0).sum()) for n in masks)
    assert nonzero <= kept
    assert pipeline.prune_masks is not None
    # the finetune phase never changes the mask
    assert all(torch.equal(pipeline.prune_masks[k], v) for k, v in masks.items())


def test_digits_pipeline_learns():
    cfg = RunConfig.model_validate(
        {
            "device": "cpu",
            "data": {"source": "digits", "batch_size": 128},
            "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2},
            "pretrain": {"epochs": 3, "lr": 0.05},
            "prune": {"epochs": 2, "sparsity": 0.5, "warmup_epochs": 1},
            "finetune": {"epochs": 1},
            "validation": {"pgd_steps": 2},
            "evaluate": {"n_examples": 128, "autoattack": False},
        }
    )
    pipeline = Pipeline(cfg)
    records = pipeline.run()
    assert records[2]["val_clean_acc"] > 0.7  # 10 classes: chance is 0.1
    assert pipeline.evaluate_test()["test_clean_acc"] > 0.5


@pytest.mark.parametrize(
    "interrupt_after, overrides",
    [
        (1, {}),
        (3, {}),
        (5, {}),
        (6, {"prune.perturbation": "random"}),
        (3, {"prune.host": "harp"}),  # HARP: the rates, their momentum, the budget-loss weight
        (4, {"prune.host": "harp"}),
    ],
)
def test_resume_equals_uninterrupted(interrupt_after, overrides):
    cfg = tiny_config(**overrides)
    data = load_data(cfg)
    reference = Pipeline(cfg, data=data)
    reference.run()

    first = Pipeline(cfg, data=data)
    for _ in range(interrupt_after):
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    # Something else uses the global RNG in between; the checkpoint must not depend on it.
    torch.rand(1000)
    buffer.seek(0)
    resumed = Pipeline(cfg, data=data)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.run()

    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == res_state.keys()
    for key, value in ref_state.items():
        if torch.is_tensor(value):
            assert torch.equal(value, res_state[key]), key
    assert reference.best["epoch"] == resumed.best["epoch"]
    ref_host, res_host = reference.masking.host.state_dict(), resumed.masking.host.state_dict()
    assert ref_host.keys() == res_host.keys()
    for key, value in ref_host.items():
        other = res_host[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    if "logits" in ref_host:
        assert len(set(ref_host["logits"].tolist())) > 1  # the rates were learned, not uniform


def test_config_errors_name_the_field(tmp_path):
    def error_for(text: str) -> str:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_run_config(path)
        return str(info.value)

    assert "prune.sparsty: unknown field" in error_for("prune: {sparsty: 0.9}\n")
    assert "prune.sparsity" in error_for("prune: {sparsity: 1.5}\n")
    assert "prune.rho" in error_for("prune: {rho: -0.1}\n")
    msg = error_for("model: {arch: resnet19}\n")
    assert "model.arch" in msg and "resnet18" in msg
    assert "data.source" in error_for("data: {source: imagenet}\n")
    assert "warmup_epochs" in error_for("prune: {epochs: 2, warmup_epochs: 2}\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_dense_checkpoint_in_either_format_skips_pretraining(tmp_path, fmt):
    from safetensors.torch import save_file

    cfg = tiny_config()
    data = load_data(cfg)
    dense = Pipeline(cfg, data=data, phases=("pretrain",))
    dense.run()
    state = {k: v.contiguous() for k, v in dense.dense_state_dict().items()}
    path = tmp_path / f"dense.{fmt}"
    if fmt == "torch":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    cfg = tiny_config(**{"dense.checkpoint": str(path)})
    pipeline = Pipeline(cfg, data=data)
    assert pipeline.phases == ["prune", "finetune"]
    loaded = pipeline.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
