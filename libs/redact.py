"""Credentials in driver_info: which keys hold them, masking them in API answers, and
scrubbing their values out of text (errors, logs) before it leaves a service.

One definition for every service: the API masks what the conductor scrubs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: A key holds a credential when its name contains one of these words.
SECRET_KEY_WORDS = ("password", "secret", "token", "key")

#: Shorter values are not scrubbed from text: replacing "1" or "on" everywhere would mangle
#: the text and hide nothing worth hiding.
MIN_SECRET_LENGTH = 4

FIELD_MASK = "******"  # stands for a credential field in API answers
TEXT_MASK = "***"  # stands for a credential quoted in a message


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def mask_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with every credential's value replaced by :data:`FIELD_MASK`, at any depth,
    and any credential quoted in another field's text replaced by :data:`TEXT_MASK` (an
    operator may paste one into a note or a test's error message)."""
    return _mask_mapping(info, sorted(secret_values(info), key=len, reverse=True))


def _mask_mapping(info: Mapping[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {
        key: FIELD_MASK if is_secret_key(str(key)) else _mask_value(value, secrets)
        for key, value in info.items()
    }


def _mask_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return _mask_mapping(value, secrets)
    if isinstance(value, list):
        return [_mask_value(item, secrets) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, TEXT_MASK)
    return value


def secret_values(info: Mapping[str, Any]) -> set[str]:
    """The credentials in ``info`` (at any depth) long enough to be scrubbed from text."""
    return {value for value in _secrets(info) if len(value) >= MIN_SECRET_LENGTH}


def _secrets(value: Any, secret: bool = False) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secrets(item, secret or is_secret_key(str(key)))
    elif isinstance(value, list):
        for item in value:
            yield from _secrets(item, secret)
    elif secret and isinstance(value, str | int) and not isinstance(value, bool):
        yield str(value)


def scrub(text: str, info: Mapping[str, Any]) -> str:
    """``text`` with every credential of ``info`` in it replaced by :data:`TEXT_MASK`."""
    # Longest first, so a secret containing another is masked whole.
    for secret in sorted(secret_values(info), key=len, reverse=True):
        text = text.replace(secret, TEXT_MASK)
    return text
