"""Secret masking: what a run must never write out, by key name and by value. It needs none of the
config models (``KdflowConfig.public_dict`` uses it, not the other way round), so it stands apart as the
one masking function that config.json, run.json, manifests, results and the report go through."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def uri_password(uri: str | None) -> str | None:
    """The password of a URI's userinfo (``scheme://user:password@host``), or None."""
    from urllib.parse import unquote, urlsplit

    if not uri or "@" not in uri:
        return None
    try:
        password = urlsplit(uri).password
    except ValueError:
        return None
    return unquote(password) if password else None


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")
MASK = "***"
# A secret at least this long is also masked inside a longer string (a URL's userinfo); a shorter one
# only where it is the whole value, so a short secret cannot garble unrelated text.
_MIN_EMBEDDED_SECRET = 8


def names_a_secret(key: object) -> bool:
    return any(word in str(key).lower() for word in _SECRET_WORDS)


def mask_secrets(data: Any, secrets: Iterable[str] = (), *, by_key: bool = False) -> Any:
    """``data`` with every known secret value replaced by ``***``, and with ``by_key`` every scalar under
    a key that names a secret (key, secret, token, password, credential) too.

    ``by_key`` is for free-form mappings such as ``store.storage_options``: typed config fields
    (``max_tokens``, ``api_key_env``) and records (``prompt_tokens``, ``key_fact_recall``) name no secret,
    so elsewhere only the values are matched. The one masking function of kdflow: config.json,
    run.json, manifests, results and report all go through it."""
    known = sorted(set(secrets), key=len, reverse=True)  # the longest first: one secret may contain another
    if not known and not by_key:
        return data

    def mask(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: MASK if by_key and names_a_secret(k) and not isinstance(v, Mapping) else mask(v)
                    for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [mask(v) for v in node]
        if isinstance(node, bool) or not isinstance(node, str | int | float):
            return node
        if str(node) in known:
            return MASK
        if isinstance(node, str):
            for secret in known:
                if len(secret) >= _MIN_EMBEDDED_SECRET and secret in node:
                    node = node.replace(secret, MASK)
        return node

    return mask(data)
