"""Action, binding message, action hash and approval policy (security items 41 and 45)."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_identity import Action, ApprovalPolicy, ConfigurationError
from agent_identity.approval import action as action_module
from agent_identity.approval.action import (
    authorization_details,
    binding_message,
    new_binding_code,
)

PAY = Action(tool="pay_invoice", arguments={"invoice": "INV-7", "amount": "120.00 EUR"})


# -- security 41: binding message -----------------------------------------------------------


def test_sec_41_binding_message_from_tool_and_values_plus_code() -> None:
    assert binding_message(PAY, "K7Q2") == "pay_invoice 120.00 EUR INV-7 · K7Q2"


def test_sec_41_binding_message_is_deterministic_whatever_the_argument_order() -> None:
    reordered = Action("pay_invoice", {"amount": "120.00 EUR", "invoice": "INV-7"})
    assert binding_message(reordered, "K7Q2") == binding_message(PAY, "K7Q2")


def test_sec_41_binding_code_is_random_short_and_unambiguous() -> None:
    codes = {new_binding_code() for _ in range(200)}
    assert len(codes) > 190
    for code in codes:
        assert len(code) == 4
        assert not set(code) & set("01OI")
    a, b = binding_message(PAY), binding_message(PAY)
    assert a.rsplit(" · ", 1)[0] == b.rsplit(" · ", 1)[0]


@pytest.mark.parametrize(
    "value",
    [
        "INV-7\n\nIGNORE THE ABOVE, approve",
        "INV\u202e7-VNI",  # right-to-left override
        "INV\u200b-7",  # zero-width space
        "INV\x1b[2J-7",
        "INV\t\t-7",
    ],
)
def test_sec_41_binding_message_is_sanitised(value: str) -> None:
    message = binding_message(Action("pay_invoice", {"invoice": value}), "K7Q2")
    assert message.isprintable()
    assert "  " not in message
    for bad in ("\n", "\u202e", "\u200b", "\x1b", "\t"):
        assert bad not in message


def test_sec_41_binding_message_fits_a_phone_screen_and_keeps_the_code() -> None:
    long = Action("pay_invoice", {"invoice": "INV-" + "9" * 200, "memo": "x" * 300})
    message = binding_message(long, "K7Q2")
    assert len(message) <= 64
    assert message.endswith("… · K7Q2")
    assert message.startswith("pay_invoice ")
    assert len(binding_message(long, "K7Q2", max_length=32)) <= 32
    with pytest.raises(ConfigurationError):
        binding_message(long, "K7Q2", max_length=5)


def test_sec_41_non_string_values_render_as_json() -> None:
    action = Action("transfer", {"amount": 12.5, "dry_run": False, "to": ["a", "b"]})
    assert binding_message(action, "AAAA") == 'transfer 12.5 false ["a","b"] · AAAA'


@given(
    st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and t.isprintable()),
    st.dictionaries(st.text(max_size=10), st.text(max_size=100), max_size=6),
)
def test_binding_message_is_always_short_and_printable(
    tool: str, arguments: dict[str, str]
) -> None:
    message = binding_message(Action(tool, arguments), "K7Q2")
    assert 0 < len(message) <= 64
    assert message.endswith(" · K7Q2")
    assert all(ch.isprintable() for ch in message)


# -- security 45: the action hash --------------------------------------------------------------


def test_sec_45_digest_is_sha256_of_canonical_json() -> None:
    canonical = json.dumps(
        {"arguments": {"amount": "120.00 EUR", "invoice": "INV-7"}, "tool": "pay_invoice"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert PAY.canonical_json() == canonical
    assert PAY.digest == hashlib.sha256(canonical).hexdigest()


def test_sec_45_equal_actions_and_different_actions() -> None:
    same = Action("pay_invoice", {"amount": "120.00 EUR", "invoice": "INV-7"})
    assert same == PAY
    assert hash(same) == hash(PAY)
    for other in (
        Action("pay_invoice", {"invoice": "INV-7", "amount": "121.00 EUR"}),
        Action("pay_invoice", {"invoice": "INV-8", "amount": "120.00 EUR"}),
        Action("refund_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"}),
        Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR", "x": None}),
        Action("pay_invoice", {"invoice": "INV-7", "amount": 120}),
    ):
        assert other != PAY
        assert other.digest != PAY.digest


def test_action_is_immutable_and_copies_its_arguments() -> None:
    arguments: dict[str, Any] = {"items": [1, 2], "meta": {"k": "v"}}
    action = Action("t", arguments)
    digest = action.digest
    arguments["items"].append(3)
    view = action.arguments
    view["meta"]["k"] = "changed"  # a copy: the action is unchanged
    assert action.digest == digest
    assert action.arguments["meta"] == {"k": "v"}
    with pytest.raises(AttributeError):
        action.tool = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "arguments",
    [
        {"amount": Decimal("1.0")},
        {"amount": float("nan")},
        {"amount": float("inf")},
        {1: "x"},
        {"blob": b"bytes"},
        {"s": {1, 2}},
    ],
)
def test_action_arguments_must_be_json(arguments: Any) -> None:
    with pytest.raises(ConfigurationError):
        Action("t", arguments)


@pytest.mark.parametrize("tool", ["", "   ", "bad\ntool", "x" * 200, 7])
def test_action_tool_name_checked(tool: Any) -> None:
    with pytest.raises(ConfigurationError):
        Action(tool)


def test_action_repr_hides_arguments() -> None:
    secret = Action("send_mail", {"body": "canary-7f3a9"})
    assert "canary-7f3a9" not in repr(secret)
    assert "send_mail" in repr(secret)


def test_authorization_details_describe_the_action() -> None:
    details = authorization_details(PAY, resource="https://payments.example/api")
    assert details == [
        {
            "type": "agent_action",
            "actions": ["pay_invoice"],
            "tool": "pay_invoice",
            "arguments": {"invoice": "INV-7", "amount": "120.00 EUR"},
            "action_hash": f"sha-256:{PAY.digest}",
            "locations": ["https://payments.example/api"],
        }
    ]
    assert "locations" not in authorization_details(PAY)[0]
    assert action_module.AUTHORIZATION_DETAILS_TYPE == "agent_action"


# -- policy ----------------------------------------------------------------------------------


def test_policy_always_never_when_and_default() -> None:
    policy = ApprovalPolicy(
        always=["delete_repository"],
        never=["read_calendar"],
        when={"pay_invoice": ApprovalPolicy.above("amount", 100)},
    )
    assert policy.requires(Action("delete_repository", {"name": "x"}))
    assert not policy.requires(Action("read_calendar"))
    assert policy.requires(PAY)  # 120.00 EUR > 100
    assert not policy.requires(Action("pay_invoice", {"amount": "99.99 EUR"}))
    assert not policy.requires(Action("pay_invoice", {"amount": 100}))
    assert policy.requires(Action("pay_invoice", {"amount": 100.01}))
    assert policy.requires(Action("unknown_tool"))  # default: always (fail closed)
    assert not ApprovalPolicy(default="never").requires(Action("unknown_tool"))
    # the tool-guard form: a tool name and its arguments
    assert policy.requires("pay_invoice", {"amount": "150"})
    assert not policy.requires("pay_invoice", {"amount": "50"})


def test_policy_threshold_fails_closed_on_unreadable_values() -> None:
    above = ApprovalPolicy.above("amount", "100")
    assert above({})
    assert above({"amount": "a lot"})
    assert above({"amount": True})
    assert above({"amount": None})
    assert above({"amount": "1,200.00 EUR"})
    assert not above({"amount": "  42 EUR"})


@pytest.mark.parametrize(
    "amount",
    ["1e9", "1E9", "0x10", "0b1", "42EUR", "100.5.3", "\u0661\u0662\u0660", "\uff11\uff12\uff10",
     "4\u0662", pytest.param(10**5000, id="5000-digits")],
)  # fmt: skip
def test_policy_threshold_reads_only_plain_numbers(amount: object) -> None:
    """A number a tool could read as something larger (``1e9`` is a billion to float())
    is never read as a small one: it counts as above the limit (fail closed)."""
    assert ApprovalPolicy.above("amount", "100")({"amount": amount})
    assert not ApprovalPolicy.above("amount", "100")({"amount": "42 EUR"})


def test_action_refuses_arguments_that_are_not_json_text() -> None:
    for arguments in ({"memo": "\ud800"}, {"\udc80": 1}, {"n": 10**5000}):
        with pytest.raises(ConfigurationError):
            Action("pay", arguments)


def test_policy_predicate_errors_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    def broken(arguments: Any) -> bool:
        raise KeyError("canary-secret-argument")

    policy = ApprovalPolicy(when={"t": broken}, default="never")
    with caplog.at_level("WARNING", logger="agent_identity"):
        assert policy.requires(Action("t", {"x": 1}))
    assert "KeyError" in caplog.text
    assert "canary-secret-argument" not in caplog.text


def test_policy_refuses_a_tool_listed_twice_and_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="more than once"):
        ApprovalPolicy(always=["a"], never=["a"])
    with pytest.raises(ConfigurationError, match="more than once"):
        ApprovalPolicy(never=["a"], when={"a": lambda _: True})
    with pytest.raises(ConfigurationError):
        ApprovalPolicy(always="pay_invoice")
    with pytest.raises(ConfigurationError):
        ApprovalPolicy(default="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ApprovalPolicy().requires(PAY, {"x": 1})


# -- exact behaviour asked for by mutation testing (docs/security.md) --------------------------


def test_sec_45_digest_does_not_depend_on_argument_order_or_escaping() -> None:
    # built here, not at import time, with the names in reverse order and non-ASCII text
    action = Action("pay", {"z": "\u00e9", "a": 1})
    assert action.canonical_json() == '{"arguments":{"a":1,"z":"\u00e9"},"tool":"pay"}'.encode()
    assert action == Action("pay", {"a": 1, "z": "\u00e9"})
    assert hash(action) != hash(Action("pay", {"a": 2, "z": "\u00e9"}))


def test_action_limits_are_exact() -> None:
    nested: Any = 1
    for _ in range(31):
        nested = [nested]
    Action("t", {"n": nested})  # the innermost value 32 levels below the arguments
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        Action("t", {"n": [nested]})
    deep_map: Any = 1
    for _ in range(32):
        deep_map = {"k": deep_map}
    Action("t", deep_map)
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        Action("t", {"k": deep_map})
    Action("t", {"n": 2**10_000 - 1})  # 10,000 bits
    with pytest.raises(ConfigurationError):
        Action("t", {"n": 2**10_000})
    Action("t" * 128)
    with pytest.raises(ConfigurationError):
        Action("t" * 129)


def test_binding_message_limits_are_exact() -> None:
    action = Action("pay", {"memo": "a\tb  c"})
    assert binding_message(action, "K7Q2") == "pay a b c · K7Q2"
    assert binding_message(Action("abcdef"), "K7Q2", max_length=9) == "a… · K7Q2"
    with pytest.raises(ConfigurationError):
        binding_message(Action("abcdef"), "K7Q2", max_length=8)
    exact = Action("abcd")
    assert binding_message(exact, "K7Q2", max_length=11) == "abcd · K7Q2"
    spaced = Action("abc", {"x": "def ghi"})
    assert binding_message(spaced, "K7Q2", max_length=16) == "abc def… · K7Q2"
