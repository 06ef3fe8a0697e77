"""Names and references in request bodies: limits apply to the text as sent (what the
published schema says), then surrounding whitespace is dropped."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.schemas import NetworkCreate, NodeCreate

PROPERTIES = {"cpus": 1, "memory_mb": 1, "disk_gb": 1}


def test_a_name_longer_than_its_schema_allows_is_refused_even_if_padded() -> None:
    with pytest.raises(ValidationError, match="at most 255"):
        NetworkCreate.model_validate({"name": "\n" + "x" * 255})
    assert NetworkCreate.model_validate({"name": "x" * 255}).name == "x" * 255


def test_surrounding_whitespace_is_dropped_and_a_blank_name_refused() -> None:
    assert NetworkCreate.model_validate({"name": "  web  "}).name == "web"
    with pytest.raises(ValidationError, match="must not be blank"):
        NetworkCreate.model_validate({"name": "   "})


def test_a_node_name_is_taken_only_as_its_url_form() -> None:
    body = {"resource_class": " baremetal ", "properties": PROPERTIES}
    assert (
        NodeCreate.model_validate({**body, "name": "rack1-node.07"}).resource_class == "baremetal"
    )
    with pytest.raises(ValidationError):
        NodeCreate.model_validate({**body, "name": " rack1 "})
