"""Student profiles chosen from the model's config (model_type), not its name, with the user's
config and measured name profiles winning over them (kdflow.student.profiles)."""

from __future__ import annotations

import logging

import pytest

from kdflow.config import ConfigError, StudentConfig, load_config
from kdflow.student.profiles import ALL_LINEAR, context_length, resolve_profile

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _model_config(model_type: str, **settings):
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](**settings)


def _student(student: dict | None = None, environ: dict | None = None) -> StudentConfig:
    return load_config({"student": student} if student else None, environ=environ or {}).student


@pytest.mark.parametrize(
    ("model_type", "family", "targets"),
    [
        ("phi", "Phi-2", ["q_proj", "k_proj", "v_proj", "dense"]),
        ("qwen3", "Qwen3", ATTENTION),
        ("llama", "Llama-3.2 / SmolLM2", ATTENTION),
        ("gemma3_text", "Gemma-3", ATTENTION),
    ],
)
def test_a_folder_of_any_name_gets_its_architectures_profile(model_type, family, targets):
    student = _student({"model": "/srv/models/student-v7"})  # no name pattern but "*"
    profile = resolve_profile(student, _model_config(model_type))
    assert (profile.architecture, profile.family, profile.target_modules) == (model_type, family, targets)
    assert (profile.learning_rate, profile.epochs) == (2.0e-4, 3)  # the architecture's, not "*"'s 5e-4


def test_a_measured_name_profile_wins_over_the_architecture():
    smollm2 = resolve_profile(_student(), _model_config("llama"))  # "embedded" is SmolLM2-135M: llama
    assert (smollm2.learning_rate, smollm2.epochs, smollm2.target_modules) == (5.0e-4, 3, ATTENTION)
    phi2 = resolve_profile(_student({"model": "microsoft/phi-2"}), _model_config("phi"))
    assert (phi2.learning_rate, phi2.family) == (2.0e-4, "Phi-2")


def test_values_the_user_sets_win_over_the_architecture():
    explicit = _student({"model": "Qwen/Qwen3-0.6B", "learning_rate": 1e-3, "target_modules": ["q_proj"]},
                        {"KDFLOW__STUDENT__EPOCHS": "5"})
    profile = resolve_profile(explicit, _model_config("qwen3"))
    assert (profile.learning_rate, profile.epochs, profile.target_modules) == (1e-3, 5, ["q_proj"])
    updated = _student({"model": "Qwen/Qwen3-0.6B"}).model_copy(update={"learning_rate": 3e-2})  # as the tests do
    assert resolve_profile(updated, _model_config("qwen3")).learning_rate == 3e-2
    assert resolve_profile(_student({"model": "Qwen/Qwen3-0.6B"}), _model_config("qwen3")).learning_rate == 2.0e-4


def test_the_user_can_add_an_architecture_and_a_bad_one_names_the_field():
    mamba = {"family": "Mamba", "target_modules": ["in_proj", "out_proj"], "learning_rate": 1e-4, "epochs": 2}
    student = _student({"model": "state-spaces/mamba-130m", "architectures": {"mamba": mamba}})
    assert "qwen3" in student.architectures  # added to the packaged ones, not instead of them
    profile = resolve_profile(student, _model_config("mamba"))
    assert (profile.family, profile.target_modules, profile.learning_rate, profile.epochs) == (
        "Mamba", ["in_proj", "out_proj"], 1e-4, 2)
    with pytest.raises(ConfigError, match=r"student\.architectures\.mamba\.target_modules"):
        _student({"architectures": {"mamba": {**mamba, "target_modules": []}}})


def test_an_unknown_architecture_trains_every_linear_layer_with_the_generic_numbers(caplog):
    with caplog.at_level(logging.WARNING, logger="kdflow.student.profiles"):
        profile = resolve_profile(_student({"model": "EleutherAI/pythia-70m"}), _model_config("gpt_neox"))
    assert (profile.architecture, profile.family, profile.target_modules) == (None, None, ALL_LINEAR)
    assert (profile.learning_rate, profile.epochs) == (5.0e-4, 3)
    [record] = caplog.records
    assert "no student.architectures profile for model_type 'gpt_neox'" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_the_model_context_caps_max_length():
    student = _student({"max_length": 4096})
    phi2 = resolve_profile(student, _model_config("phi", max_position_embeddings=2048))  # Phi-2's context
    assert (phi2.context_length, phi2.max_length) == (2048, 2048)
    assert resolve_profile(student, _model_config("qwen3", max_position_embeddings=40960)).max_length == 4096
    assert context_length(_model_config("gpt2", n_positions=1024)) == 1024
    assert context_length(object()) is None
