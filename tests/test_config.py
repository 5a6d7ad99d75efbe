import pytest

from kdflow.config import ConfigError, KdflowConfig, env_overrides, load_config


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
        ({"pipeline": {"cycles": 0}}, "pipeline.cycles", "greater than or equal to 1"),
        ({"pipeline": {"cycles": 99}}, "pipeline.cycles", "less than or equal to 20"),
        ({"pipeline": {"cycles": 4}}, "pipeline", "exceeds max_cycles=3"),
        ({"pipeline": {"questions_per_cycle": -3}}, "pipeline.questions_per_cycle", "greater than or equal to 1"),
        ({"pipeline": {"questions_per_cycle": 100000}}, "pipeline.questions_per_cycle", "less than or equal to 200"),
        ({"pipeline": {"questions_per_cycle": "three"}}, "pipeline.questions_per_cycle", "valid integer"),
        ({"pipeline": {"topics": []}}, "pipeline.topics", "at least 1 item"),
        ({"pipeline": {"topics": ["pods", "Pods"]}}, "pipeline.topics", "must be unique"),
        ({"teacher": {"temperature": 3}}, "teacher.temperature", "less than or equal to 2"),
        ({"teacher": {"provider": "bard"}}, "teacher.provider", "'embedded' or 'openai'"),
        ({"teacher": {"base_url": "ftp://x"}}, "teacher.base_url", "must start with http"),
        ({"teacher": {"api_key_env": "not a var"}}, "teacher.api_key_env", "pattern"),
        ({"student": {"lora_r": 0}}, "student.lora_r", "greater than or equal to 1"),
        ({"student": {"learning_rate": 0}}, "student.learning_rate", "greater than 0"),
        ({"student": {"lora_dropout": 1.0}}, "student.lora_dropout", "less than 1"),
        ({"evaluation": {"metrics": ["bogus"]}}, "evaluation.metrics.0", "answer_relevancy"),
        ({"store": {"url": "ftp://host/x"}}, "store.url", "unknown store scheme 'ftp'"),
        ({"teacher": {"modle": "x"}}, "teacher.modle", "unknown key"),
        ({"surprise": 1}, "surprise", "unknown key"),
    ],
)
def test_each_bad_value_is_rejected_with_its_field_and_range(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(override, environ={})
    message = str(info.value)
    assert f"- {field}:" in message
    assert fragment in message


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
                                                     "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}}}, environ={})
    options = cfg.public_dict()["store"]["storage_options"]
    assert options == {"key": "***", "secret": "***", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert cfg.store.storage_options["secret"] == "s3cr3t"  # the live config still has it
