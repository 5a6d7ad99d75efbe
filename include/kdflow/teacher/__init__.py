"""The teacher: grounded, de-duplicated questions and grounded reference answers, as validated JSON."""

from kdflow.teacher.gate import TeacherError
from kdflow.teacher.questions import generate_questions
from kdflow.teacher.references import generate_references
from kdflow.teacher.structured import complete_json

__all__ = ["TeacherError", "complete_json", "generate_questions", "generate_references"]
