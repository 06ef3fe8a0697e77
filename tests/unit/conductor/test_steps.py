"""How a failure is described: credentials of the node never get into the text."""

from __future__ import annotations

from types import SimpleNamespace

from libs.redact import scrub
from services.conductor.steps import LAST_ERROR_LENGTH, set_last_error


def test_every_credential_of_the_node_is_masked():
    driver_info = {
        "ipmi_address": "10.0.0.9",
        "ipmi_username": "admin",
        "ipmi_password": "hunter22",
        "redfish_Secret": "s3cr3t-value",
        "api_token": 12345678,
        "ssh_key": "AAAAB3Nza",
    }
    text = "admin@10.0.0.9 with hunter22, s3cr3t-value, 12345678 and AAAAB3Nza refused"

    assert scrub(text, driver_info) == "admin@10.0.0.9 with ***, ***, *** and *** refused"


def test_a_secret_containing_another_is_masked_whole():
    driver_info = {"password": "open", "bmc_password": "open-sesame"}

    assert scrub("said open-sesame, then open", driver_info) == "said ***, then ***"


def test_short_and_non_text_values_are_left_alone():
    driver_info = {"password": "on", "key_count": True, "token": None, "port_key": [1, 2]}
    text = "power on failed: True None [1, 2]"

    assert scrub(text, driver_info) == text


def test_an_overlong_error_is_cut_to_the_column_size() -> None:

    node = SimpleNamespace(driver_info={}, last_error=None)
    task = SimpleNamespace(node=node)
    written = set_last_error(task, "the ramdisk failed: " + "x" * 5000)  # type: ignore[arg-type]
    assert written is not None
    assert len(written) == LAST_ERROR_LENGTH
    assert written.startswith("the ramdisk failed: xxx")
    assert node.last_error == written
