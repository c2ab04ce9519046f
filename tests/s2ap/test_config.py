"""Run-file validation: finite, in-range values; messages that name the field and the fix."""

import types
import typing

import pytest
from pydantic import BaseModel

from s2ap.config import ConfigError, RunConfig, load_run_config


def load_text(tmp_path, text: str) -> RunConfig:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return load_run_config(path)


def error_of(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "run.yaml") in message  # names the file
    return message


@pytest.mark.parametrize(
    "yaml_text, field, fix",
    [
        ("prune: {rho: .inf}", "prune.rho", "finite number"),
        ("prune: {rho: .nan}", "prune.rho", "finite number"),
        ("prune: {rho: -.inf}", "prune.rho", "finite number"),
        ("prune: {rho: -0.1}", "prune.rho", "at least 0"),
        ("prune: {rho: 11}", "prune.rho", "at most 10"),
        ("prune: {lr: -0.1}", "prune.lr", "greater than 0"),
        ("prune: {lr: 0}", "prune.lr", "greater than 0"),
        ("pretrain: {lr: 100}", "pretrain.lr", "at most 10"),
        ("finetune: {lr: .inf}", "finetune.lr", "finite number"),
        ("finetune: {awp: {gamma: 50}}", "finetune.awp.gamma", "at most 10"),
        ("finetune: {awp: {gamma: .nan}}", "finetune.awp.gamma", "finite number"),
        ("pretrain: {weight_decay: 2}", "pretrain.weight_decay", "at most 1"),
        ("pretrain: {momentum: 1.0}", "pretrain.momentum", "less than 1"),
        ("pretrain: {trades_beta: .inf}", "pretrain.trades_beta", "finite number"),
        ("pretrain: {trades_beta: 1000}", "pretrain.trades_beta", "at most 100"),
        ("threat: {eps: .nan}", "threat.eps", "finite number"),
        ("threat: {step_size: 0}", "threat.step_size", "greater than 0"),
        ("threat: {steps: 0}", "threat.steps", "at least 1"),
        ("threat: {steps: 2.5}", "threat.steps", "whole number"),
        ("data: {val_size: .inf}", "data.val_size", "finite number"),
        ("data: {batch_size: 0}", "data.batch_size", "at least 1"),
        ("prune: {sparsity: 1.0}", "prune.sparsity", "less than 1"),
        ("prune: {ascent_steps: 0}", "prune.ascent_steps", "at least 1"),
        ("prune: {epochs: -1}", "prune.epochs", "at least 0"),
        ("validation: {sharpness_rho: 0}", "validation.sharpness_rho", "greater than 0"),
        ("validation: {sharpness_rho: .inf}", "validation.sharpness_rho", "finite number"),
        ("evaluate: {n_examples: 0}", "evaluate.n_examples", "at least 1"),
        ("compute: {amp: fp16}", "compute.amp", "'none' or 'bf16'"),
        ("compute: {channels_lsat: true}", "compute.channels_lsat", "unknown field"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(tmp_path, yaml_text, field, fix):
    message = error_of(tmp_path, yaml_text)
    assert f": {field}: " in message, message
    assert fix in message, message


@pytest.mark.parametrize(
    "yaml_text",
    [
        "prune: {rho: 10, lr: 10}",  # the upper bounds themselves are allowed
        "prune: {rho: 0}",  # rho = 0 is the host update, a valid control
        "finetune: {awp: {enabled: true, gamma: 10}}",
        "compute: {amp: bf16, channels_last: true, compile: true}",
    ],
)
def test_values_at_the_bounds_are_accepted(tmp_path, yaml_text):
    load_text(tmp_path, yaml_text)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_an_error_saying_what_a_run_file_needs(tmp_path, text):
    message = error_of(tmp_path, text)
    assert "the file is empty" in message
    assert "needs at least" in message and "data:" in message and "model:" in message


def test_compute_defaults_to_the_plain_fp32_path():
    compute = RunConfig().compute
    assert (compute.amp, compute.channels_last, compute.compile) == ("none", False, False)


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every float field (plain or optional) of ``model``'s sections."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        if annotation is float or (is_union and float in args and type(None) in args):
            out.append(prefix + name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _float_fields(annotation, f"{prefix}{name}.")
    return out


FLOAT_FIELDS = _float_fields(RunConfig)


def test_the_walk_found_the_float_fields():
    assert {"prune.rho", "threat.eps", "data.val_size", "finetune.awp.gamma"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("path", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_field_must_be_finite(tmp_path, path, value):
    *sections, leaf = path.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
    text += f"{'  ' * len(sections)}{leaf}: {value}\n"
    message = error_of(tmp_path, text)
    assert f": {path}: must be a finite number" in message, message
