"""The teacher-data gate section of the config (issue #10): defaults, overrides and ranges. The gate
reads it as it is (kdflow.teacher.gate.check_question, kdflow.teacher.references.review_reference)."""

import pytest

from kdflow.config import ConfigError, GateConfig, load_config


def test_gate_defaults():
    gate = load_config(environ={}).teacher.gate
    assert gate == GateConfig() and gate.reference_mode == "hybrid" and not gate.llm_check
    assert (gate.min_words, gate.max_words, gate.passage_floor) == (4, 40, 0.3)


def test_gate_overrides_from_env_and_params():
    env = {"KDFLOW__TEACHER__GATE__REFERENCE_MODE": "extractive", "KDFLOW__TEACHER__GATE__SUPPORT_FLOOR": "0.8"}
    gate = load_config({"teacher": {"gate": {"reference_attempts": 4, "min_words": 6}}}, environ=env).teacher.gate
    assert (gate.reference_mode, gate.support_floor, gate.reference_attempts,
            gate.min_words) == ("extractive", 0.8, 4, 6)


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"reference_mode": "summary"}, "teacher.gate.reference_mode",
         "one of 'abstractive', 'extractive', 'hybrid' (got"),
        ({"support_floor": 1.5}, "teacher.gate.support_floor", "must be a number between 0 and 1 (got 1.5)"),
        ({"support_floor": -0.1}, "teacher.gate.support_floor", "must be a number between 0 and 1 (got -0.1)"),
        ({"min_kept_share": 0}, "teacher.gate.min_kept_share",
         "must be a number, greater than 0 and at most 1 (got 0)"),
        ({"reference_attempts": 0}, "teacher.gate.reference_attempts", "must be an integer between 1 and 10 (got 0)"),
        ({"reference_attempts": 11}, "teacher.gate.reference_attempts", "must be an integer between 1 and 10 (got 11)"),
        ({"extractive_sentences": 0}, "teacher.gate.extractive_sentences",
         "must be an integer between 1 and 10 (got 0)"),
        ({"passage_floor": 2}, "teacher.gate.passage_floor", "must be a number between 0 and 1 (got 2)"),
        ({"min_words": 0}, "teacher.gate.min_words", "must be an integer between 1 and 200 (got 0)"),
        ({"min_words": 30, "max_words": 10}, "teacher.gate.min_words", "must be at most max_words=10 (got 30)"),
        ({"llm_check": "maybe"}, "teacher.gate.llm_check", "must be true or false (got 'maybe')"),
        ({"suport_floor": 0.5}, "teacher.gate.suport_floor", "unknown key"),
    ],
)
def test_each_bad_gate_value_is_rejected_with_its_field_and_range(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config({"teacher": {"gate": override}}, environ={})
    message = str(info.value)
    assert f"- {field}: " in message, message
    assert fragment in message, message


def test_student_learning_rate_default_is_the_measured_one():
    student = load_config(environ={}).student
    assert (student.training_profile, student.learning_rate, student.epochs) == ("smollm2", LEARNING_RATE, EPOCHS)


# The embedded-default profile measured for issue #10 (see the comment in defaults.yaml).
LEARNING_RATE, EPOCHS = 5.0e-4, 3
