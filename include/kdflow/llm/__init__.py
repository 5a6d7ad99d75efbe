"""OpenAI-compatible endpoints for the teacher and the judge: the embedded llama.cpp server,
a response cache with usage accounting, and the clients that use both."""

from kdflow.llm.cache import UsageLedger
from kdflow.llm.client import LLMError, json_response_format, make_client
from kdflow.llm.server import Endpoint, teacher_endpoint

__all__ = ["Endpoint", "LLMError", "UsageLedger", "json_response_format", "make_client", "teacher_endpoint"]
