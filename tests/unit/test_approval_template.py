"""Binding message templates (security item 41: built from the action, never model prose)."""

from __future__ import annotations

import pytest

from agent_identity import Action, ConfigurationError
from agent_identity.approval.flow import templated_binding_message

PAY = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR", "n": 3})


def test_fields_are_filled_from_the_action_and_the_code_is_kept() -> None:
    message = templated_binding_message(PAY, "Pay {amount} for {invoice} ({n}x)", "K7Q2")
    assert message == "Pay 120.00 EUR for INV-7 (3x) · K7Q2"


def test_braces_escape_and_unknown_fields_are_refused() -> None:
    assert templated_binding_message(PAY, "{{literal}} {invoice}", "AAAA") == (
        "{literal} INV-7 · AAAA"
    )
    with pytest.raises(ConfigurationError, match="does not have"):
        templated_binding_message(PAY, "Pay {missing}", "AAAA")
    with pytest.raises(ConfigurationError, match="unmatched"):
        templated_binding_message(PAY, "Pay {invoice", "AAAA")
    with pytest.raises(ConfigurationError, match="unmatched"):
        templated_binding_message(PAY, "{invoice.__class__}", "AAAA")


def test_control_and_format_characters_never_reach_the_device() -> None:
    sneaky = Action("pay", {"to": "bob\u202e\nevil\x00 \t corp"})
    message = templated_binding_message(sneaky, "Pay {to}", "CODE")
    assert message == "Pay bob evil corp · CODE"  # newline: a space; RLO and NUL: gone


def test_long_values_are_cut_and_the_code_survives() -> None:
    long = Action("pay", {"memo": "x" * 500})
    message = templated_binding_message(long, "Memo {memo}", "CODE", max_length=40)
    assert len(message) == 40
    assert message.endswith("… · CODE")
