"""JSON schemas in the subset OpenAI's strict structured outputs accept.

Strict mode (``response_format: {"type": "json_schema", "json_schema": {..., "strict": true}}``)
compiles the schema into constrained decoding and refuses (HTTP 400) a schema outside its subset:
every object closed (``additionalProperties: false``) with every property required, and only the
keywords OpenAI documents: ``type``, ``properties``, ``required``, ``additionalProperties``,
``items``, ``enum``, ``const``, ``anyOf``, ``$defs``/``$ref``, ``description``, plus ``pattern`` and
``format`` on strings, ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``/``multipleOf``
on numbers and ``minItems``/``maxItems`` on arrays. ``minLength``/``maxLength`` ("not permitted"),
``default``, ``title`` and the rest are dropped here: pydantic still validates every reply against the
full model, so a dropped constraint is checked after decoding instead of during it.

:func:`strict_schema` rewrites a pydantic ``model_json_schema()`` into that subset, walking the
schema's own structure (a property named ``title`` is a property, not a keyword).
"""

from __future__ import annotations

import copy
from typing import Any

STRING_KEYWORDS = frozenset({"pattern", "format"})
NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
ARRAY_KEYWORDS = frozenset({"minItems", "maxItems"})
CORE_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "const",
                           "anyOf", "$defs", "$ref", "description"})
ALLOWED_KEYWORDS = CORE_KEYWORDS | STRING_KEYWORDS | NUMBER_KEYWORDS | ARRAY_KEYWORDS
STRING_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` that strict structured outputs accept (see the module docstring)."""
    root = copy.deepcopy(schema)
    definitions = root.get("$defs", {})

    def resolve(ref: str) -> dict[str, Any]:
        return copy.deepcopy(definitions[ref.rsplit("/", 1)[-1]])

    def visit(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "allOf" in node and len(node["allOf"]) == 1:  # pydantic's {"allOf": [{"$ref": ...}], "description": ...}
            node = {**{k: v for k, v in node.items() if k != "allOf"}, **node["allOf"][0]}
        if "$ref" in node and len(node) > 1:  # a $ref with siblings: inline it (as openai-python's helper does)
            node = {**resolve(node["$ref"]), **{k: v for k, v in node.items() if k != "$ref"}}
        out = {k: v for k, v in node.items() if k in ALLOWED_KEYWORDS}
        if "format" in out and out["format"] not in STRING_FORMATS:
            del out["format"]
        if isinstance(out.get("additionalProperties"), dict) and "properties" not in out:
            out["additionalProperties"] = visit(out["additionalProperties"])  # a free-form dict: strict mode
        elif "properties" in out or out.get("type") == "object":  # has no form for it, so it stays (and is refused)
            out["properties"] = {name: visit(sub) for name, sub in out.get("properties", {}).items()}
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        if "items" in out:
            out["items"] = visit(out["items"])
        if "anyOf" in out:
            out["anyOf"] = [visit(sub) for sub in out["anyOf"]]
        if "$defs" in out:
            out["$defs"] = {name: visit(sub) for name, sub in out["$defs"].items()}
        return out

    return visit(root)
