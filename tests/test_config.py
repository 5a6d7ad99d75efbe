from typing import Literal

import pytest
from pydantic import Field, create_model

from kdflow.config import ConfigError, KdflowConfig, env_overrides, load_config, set_overrides
from kdflow.config_errors import describe_field


def test_defaults_load_and_match_the_design():
    cfg = load_config(environ={})
    assert isinstance(cfg, KdflowConfig)
    assert cfg.pipeline.topics == ["pods", "services", "storage"]
    assert cfg.pipeline.cycles == 2 and cfg.pipeline.questions_per_cycle == 3
    assert cfg.teacher.model == "gpt-4o-mini"
    assert cfg.airflow.gpu_pool == "gpu"


def test_env_overrides_nested_and_typed():
    env = {"KDFLOW__TEACHER__TEMPERATURE": "0.2", "KDFLOW__PIPELINE__TOPICS": "[pods]", "OTHER": "x"}
    assert env_overrides(env) == {"teacher": {"temperature": 0.2}, "pipeline": {"topics": ["pods"]}}
    cfg = load_config(environ=env)
    assert cfg.teacher.temperature == 0.2
    assert cfg.pipeline.topics == ["pods"]


def test_set_options_nest_and_parse_like_env_overrides():
    """`--set KEY=VALUE` (the CLI's and the benches'): dotted keys nest, values are YAML, later ones merge."""
    items = ["evaluation.gold_per_topic=24", "pipeline.topics=[pods]", "evaluation.gold_path=/tmp/g.jsonl"]
    assert set_overrides(items) == {"evaluation": {"gold_per_topic": 24, "gold_path": "/tmp/g.jsonl"},
                                    "pipeline": {"topics": ["pods"]}}
    assert set_overrides(None) == {}
    cfg = load_config(set_overrides(items), environ={})
    assert cfg.evaluation.gold_per_topic == 24 and cfg.pipeline.topics == ["pods"]


def test_precedence_file_then_env_then_overrides(tmp_path):
    user = tmp_path / "kdflow.yaml"
    user.write_text("pipeline:\n  cycles: 3\n  questions_per_cycle: 4\nteacher:\n  model: from-file\n")
    env = {"KDFLOW_CONFIG": str(user), "KDFLOW__TEACHER__MODEL": "from-env"}
    cfg = load_config({"pipeline": {"cycles": 1}}, environ=env)
    assert cfg.pipeline.cycles == 1  # override beats file
    assert cfg.pipeline.questions_per_cycle == 4  # file beats default
    assert cfg.teacher.model == "from-env"  # env beats file


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"pipeline": {"cycles": 0}}, "pipeline.cycles", "must be an integer between 1 and 20 (got 0)"),
        ({"pipeline": {"cycles": 99}}, "pipeline.cycles", "must be an integer between 1 and 20 (got 99)"),
        ({"pipeline": {"cycles": 4}}, "pipeline.cycles", "must be at most max_cycles=3 (got 4)"),
        ({"pipeline": {"questions_per_cycle": -3}}, "pipeline.questions_per_cycle", "between 1 and 200 (got -3)"),
        ({"pipeline": {"questions_per_cycle": 100000}}, "pipeline.questions_per_cycle",
         "between 1 and 200 (got 100000)"),
        ({"pipeline": {"questions_per_cycle": "three"}}, "pipeline.questions_per_cycle",
         "between 1 and 200 (got 'three')"),
        ({"pipeline": {"topics": []}}, "pipeline.topics", "must be a list with at least 1 item (got [])"),
        ({"pipeline": {"topics": ["pods", "Pods"]}}, "pipeline.topics", "must be unique"),
        ({"teacher": {"temperature": 3}}, "teacher.temperature", "must be a number between 0 and 2 (got 3)"),
        ({"teacher": {"provider": "bard"}}, "teacher.provider", "must be one of 'embedded', 'openai' (got 'bard')"),
        ({"teacher": {"base_url": "ftp://x"}}, "teacher.base_url", "must start with http"),
        ({"teacher": {"api_key_env": "not a var"}}, "teacher.api_key_env",
         "must be text matching ^[A-Za-z_][A-Za-z0-9_]*$"),
        ({"teacher": {"max_tokens": 8}}, "teacher.max_tokens", "must be an integer between 16 and 16384 (got 8)"),
        ({"teacher": {"max_tokens": 20000}}, "teacher.max_tokens",
         "must be an integer between 16 and 16384 (got 20000)"),
        ({"teacher": {"model": ""}}, "teacher.model", "must be text with at least 1 character"),
        ({"student": {"lora_r": 0}}, "student.lora_r", "must be an integer between 1 and 512 (got 0)"),
        ({"student": {"learning_rate": 0}}, "student.learning_rate",
         "must be a number, greater than 0 and at most 1 (got 0)"),
        ({"student": {"lora_dropout": 1.0}}, "student.lora_dropout",
         "must be a number, at least 0 and less than 1 (got 1.0)"),
        ({"student": {"epochs": 0}}, "student.epochs", "must be an integer between 1 and 100 (got 0)"),
        ({"student": {"epochs": 101}}, "student.epochs", "must be an integer between 1 and 100 (got 101)"),
        ({"student": {"max_length": 16}}, "student.max_length", "must be an integer between 32 and 32768 (got 16)"),
        ({"student": {"batch_size": 0}}, "student.batch_size", "must be an integer between 1 and 512 (got 0)"),
        ({"student": {"gpu_min_free_gib": -1}}, "student.gpu_min_free_gib",
         "must be a number between 0 and 1024 (got -1)"),
        ({"student": {"load_in_4bit": "maybe"}}, "student.load_in_4bit", "must be true or false (got 'maybe')"),
        ({"student": {"profiles": {"phi-2": {"epochs": 0}}}}, "student.profiles.phi-2.epochs",
         "between 1 and 100 (got 0)"),
        ({"student": {"profiles": {"qwen": {"epochs": 2}}}}, "student.profiles.qwen.learning_rate", "is required"),
        ({"seed": -1}, "seed", "must be an integer, at least 0 (got -1)"),
        ({"seed": "abc"}, "seed", "must be an integer, at least 0 (got 'abc')"),
        ({"evaluation": {"metrics": ["bogus"]}}, "evaluation.metrics.0",
         "must be one of 'answer_relevancy', 'semantic"),
        ({"store": {"url": "ftp://host/x"}}, "store.url", "unknown store scheme 'ftp'"),
        ({"teacher": {"modle": "x"}}, "teacher.modle", "unknown key"),
        ({"surprise": 1}, "surprise", "unknown key"),
    ],
)
def test_each_bad_value_is_rejected_with_its_field_and_range(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(override, environ={})
    message = str(info.value)
    assert f"- {field}: " in message, message
    assert fragment in message, message
    assert "Input should" not in message  # pydantic's wording never reaches the user


@pytest.mark.parametrize(
    ("annotation", "constraints", "expected"),
    [
        (int, {"ge": 1, "le": 20}, "must be an integer between 1 and 20"),
        (float, {"gt": 0.0}, "must be a number, greater than 0"),
        (float, {"ge": 0.5, "lt": 1.0}, "must be a number, at least 0.5 and less than 1"),
        (int, {"le": 7}, "must be an integer, at most 7"),
        (str, {}, "must be text"),
        (list[str], {"min_length": 2}, "must be a list with at least 2 items"),
        (Literal["a", "b"], {}, "must be one of 'a', 'b'"),
        (bool, {}, "must be true or false"),
    ],
)
def test_the_allowed_range_is_derived_from_the_field_constraints(annotation, constraints, expected):
    """One formatter for every field: a new field gets its message from its own Field(...)."""

    probe = create_model("Probe", value=(annotation, Field(**constraints)))
    assert describe_field(probe.model_fields["value"]) == expected
    optional = create_model("OptionalProbe", value=(annotation | None, Field(None, **constraints)))
    assert describe_field(optional.model_fields["value"]) == expected  # None allowed too: same range


def test_promotion_metric_must_be_an_evaluated_metric():
    """A metric that is not measured has no scores: the run could never promote. With a gold set
    promotion reads the gold metrics, without one the held-out (evaluation.metrics) ones."""
    measured = {"metrics": ["answer_relevancy", "rouge_l"], "gold_path": None}
    with pytest.raises(ConfigError) as info:
        load_config({"evaluation": measured, "promotion": {"metric": "semantic_similarity"}}, environ={})
    expected = ("- promotion.metric: must be one of evaluation.metrics ['answer_relevancy', 'rouge_l'] "
                "(got 'semantic_similarity')")
    assert expected in str(info.value)
    assert load_config({"evaluation": measured, "promotion": {"metric": "rouge_l"}},
                       environ={}).promotion.metric == "rouge_l"
    with pytest.raises(ConfigError) as info:
        load_config({"evaluation": {"gold_metrics": ["key_fact_recall"]},
                     "promotion": {"metric": "rouge_l"}}, environ={})
    expected = "- promotion.metric: must be one of evaluation.gold_metrics ['key_fact_recall'] (got 'rouge_l')"
    assert expected in str(info.value)


def test_promotion_metric_default_follows_the_evaluated_metrics():
    assert load_config(environ={}).promotion.metric == "key_fact_recall"  # the gold set's lead metric
    no_gold = load_config({"evaluation": {"gold_path": None}}, environ={})
    assert no_gold.promotion.metric == "semantic_similarity"  # judge-free, against the reference
    only = load_config({"evaluation": {"metrics": ["answer_relevancy", "rouge_l"], "gold_path": None}}, environ={})
    assert only.promotion.metric == "answer_relevancy"  # semantic_similarity not measured: the headline metric


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config({"pipeline": {"cycles": 0, "questions_per_cycle": 0}}, environ={})
    assert "pipeline.cycles" in str(info.value) and "pipeline.questions_per_cycle" in str(info.value)


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(config_file=tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=bad, environ={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(config_file=scalar, environ={})


def test_public_dict_masks_store_credentials():
    cfg = load_config({"store": {"storage_options": {"key": "AKIA123", "secret": "s3cr3t",
                                                     "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}}},
                      environ={})
    options = cfg.public_dict()["store"]["storage_options"]
    assert options == {"key": "***", "secret": "***", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert cfg.store.storage_options["secret"] == "s3cr3t"  # the live config still has it


# -- training defaults per model profile (issue #10) ---------------------------------------------
def _training(student: dict | None = None, environ: dict | None = None):
    cfg = load_config({"student": student} if student else None, environ=environ or {}).student
    return cfg.training_profile, cfg.learning_rate, cfg.epochs


def test_the_embedded_default_gets_the_smollm2_profile():
    assert _training() == ("smollm2", 5.0e-4, 3)
    assert _training({"model": "/models/SmolLM2-360M-Instruct.Q8_0.gguf"}) == ("smollm2", 5.0e-4, 3)


def test_phi2_gets_its_own_profile():
    assert _training({"model": "microsoft/phi-2"}) == ("phi-2", 2.0e-4, 3)
    assert _training({"model": "/srv/models/Phi-2/"}) == ("phi-2", 2.0e-4, 3)  # a local folder, any case


def test_an_unknown_model_gets_the_generic_profile():
    assert _training({"model": "Qwen/Qwen2.5-0.5B-Instruct"}) == ("*", 5.0e-4, 3)
    assert _training({"model": "microsoft/phi-1_5"}) == ("*", 5.0e-4, 3)  # not "phi-2"


def test_explicit_training_values_win_over_the_profile(tmp_path):
    assert _training({"model": "microsoft/phi-2", "learning_rate": 1e-3}) == ("phi-2", 1e-3, 3)  # params/overrides
    assert _training({"model": "microsoft/phi-2"}, {"KDFLOW__STUDENT__EPOCHS": "5"}) == ("phi-2", 2.0e-4, 5)  # env
    user = tmp_path / "kdflow.yaml"
    user.write_text("student:\n  model: microsoft/phi-2\n  learning_rate: 3.0e-4\n")
    assert _training(environ={"KDFLOW_CONFIG": str(user)}) == ("phi-2", 3.0e-4, 3)  # config file
    assert _training({"profiles": {"phi-2": {"learning_rate": 1e-4}}, "model": "microsoft/phi-2"}) == ("phi-2", 1e-4, 3)


def test_a_profile_may_set_the_adapter_shape_and_explicit_values_still_win():
    shape = {"learning_rate": 1e-3, "epochs": 5, "lora_r": 64, "lora_alpha": 128,
             "target_modules": ["q_proj", "up_proj"]}
    student = load_config({"student": {"model": "microsoft/phi-2", "profiles": {"phi-2": shape}}}, environ={}).student
    assert (student.lora_r, student.lora_alpha, student.target_modules) == (64, 128, ["q_proj", "up_proj"])
    explicit = load_config({"student": {"model": "microsoft/phi-2", "lora_r": 8, "target_modules": ["q_proj"],
                                        "profiles": {"phi-2": shape}}}, environ={}).student
    assert (explicit.lora_r, explicit.lora_alpha, explicit.target_modules) == (8, 128, ["q_proj"])
    plain = load_config({"student": {"model": "microsoft/phi-2",
                                     "profiles": {"phi-2": {"learning_rate": 1e-4, "epochs": 1}}}},
                        environ={}).student
    assert (plain.lora_r, plain.lora_alpha, plain.target_modules) == (16, 32, None)  # generic: attention projections


def test_profiles_and_student_config_built_in_code_agree_with_the_yaml():
    from kdflow.config import StudentConfig

    assert StudentConfig() == load_config(environ={}).student
    assert StudentConfig(model="microsoft/phi-2", epochs=1).learning_rate == 2.0e-4
    with pytest.raises(ValueError, match="no student.profiles pattern matches model 'embedded'"):
        StudentConfig(profiles={"phi-2": {"learning_rate": 1e-4, "epochs": 1}})


def test_tracking_defaults_to_an_embedded_store_beside_a_local_store_and_null_switches_it_off(tmp_path):
    from kdflow.store import ArtifactStore
    from kdflow.tracking import resolve_uri

    store = ArtifactStore(str(tmp_path / "store"))
    cfg = load_config(environ={})
    assert cfg.tracking.mlflow_uri == "embedded" and cfg.tracking.experiment == "kdflow"
    assert resolve_uri(cfg, store) == f"sqlite:///{tmp_path / 'store' / 'mlflow' / 'mlflow.db'}"
    assert resolve_uri(load_config(environ={"KDFLOW__TRACKING__MLFLOW_URI": "null"}), store) is None
    server = load_config({"tracking": {"mlflow_uri": "http://mlflow:5000"}}, environ={})
    assert resolve_uri(server, store) == "http://mlflow:5000"


def test_a_password_in_the_tracking_uri_is_a_secret():
    secret = "tracking-password-0123456789"
    cfg = load_config({"tracking": {"mlflow_uri": f"postgresql://mlflow:{secret}@db/mlflow"}}, environ={})
    assert secret in cfg.secret_values()
    assert cfg.public_dict(environ={})["tracking"]["mlflow_uri"] == "postgresql://mlflow:***@db/mlflow"
