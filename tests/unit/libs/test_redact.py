"""Credentials in driver_info: masked in answers at any depth, scrubbed out of text."""

from __future__ import annotations

from libs.redact import FIELD_MASK, mask_fields, scrub, secret_values

INFO = {
    "ipmi_address": "10.0.0.9",
    "ipmi_username": "admin",
    "ipmi_password": "open-sesame",
    "snmp": {"community_secret": "public-ish", "port": 161},
    "vault": [{"api_token": "tok-123456"}],
    "deploy_key": 12345678,
    "use_key": True,
}


def test_answers_mask_every_credential_at_any_depth() -> None:
    masked = mask_fields(INFO)
    assert masked["ipmi_password"] == FIELD_MASK
    assert masked["snmp"] == {"community_secret": FIELD_MASK, "port": 161}
    assert masked["vault"] == [{"api_token": FIELD_MASK}]
    assert masked["deploy_key"] == FIELD_MASK
    assert masked["ipmi_address"] == "10.0.0.9"
    assert INFO["ipmi_password"] == "open-sesame"  # the stored value is left alone


def test_answers_hide_a_credential_quoted_in_another_field() -> None:
    masked = mask_fields({**INFO, "note": "BMC rejects open-sesame", "tags": ["tok-123456"]})
    assert masked["note"] == "BMC rejects ***"
    assert masked["tags"] == ["***"]
    assert masked["ipmi_username"] == "admin"


def test_text_loses_every_credential_it_quotes() -> None:
    text = "ipmitool -U admin -P open-sesame -H 10.0.0.9 (snmp public-ish, tok-123456, 12345678)"
    assert scrub(text, INFO) == "ipmitool -U admin -P *** -H 10.0.0.9 (snmp ***, ***, ***)"


def test_flags_and_short_values_are_not_secrets_to_scrub() -> None:
    assert secret_values({"use_key": True, "pin_password": "12"}) == set()
    assert scrub("pin 12 is on", {"pin_password": "12"}) == "pin 12 is on"
