"""Rich Authorization Requests (RFC 9396) without a server: typed details validated before
sending, the comparison of what a token carries with what was asked for (§7), and the
details that apply to a token for one resource."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_identity import AuthorizationDetail, ConfigurationError
from agent_identity.grant import details_problem
from agent_identity.models import TokenResponse
from agent_identity.oauth.rar import (
    details_for_resource,
    details_to_wire,
    merge_details,
    missing_details,
)
from agent_identity.server import granted_details


class Amount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    amount: str = Field(pattern=r"^[0-9]+\.[0-9]{2}$")


class PaymentInitiation(AuthorizationDetail):
    type: Literal["payment_initiation"] = "payment_initiation"
    instructed_amount: Amount = Field(alias="instructedAmount")
    creditor_name: str = Field(alias="creditorName", min_length=1)


def payment(amount: str = "120.00") -> PaymentInitiation:
    return PaymentInitiation(
        instructedAmount=Amount(currency="EUR", amount=amount),
        creditorName="ACME",
        locations=("https://payments.example/api",),
    )


WIRE = {
    "type": "payment_initiation",
    "locations": ["https://payments.example/api"],
    "instructedAmount": {"currency": "EUR", "amount": "120.00"},
    "creditorName": "ACME",
}


def test_typed_details_go_on_the_wire_with_their_aliases() -> None:
    assert details_to_wire([payment()]) == [WIRE]
    assert details_to_wire(None) == []
    assert repr(payment()) == "PaymentInitiation(type='payment_initiation')"  # no values


def test_details_are_validated_again_before_sending() -> None:
    forged = PaymentInitiation.model_construct(
        type="payment_initiation",
        instructed_amount=Amount.model_construct(currency="eur", amount="lots"),
        creditor_name="",
    )
    with pytest.raises(ConfigurationError, match="invalid") as caught:
        details_to_wire([forged])
    assert "lots" not in str(caught.value)  # names the member, never the value


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ([{"locations": ["x"]}], "non-empty string 'type'"),
        ([{"type": ""}], "non-empty string 'type'"),
        ([{"type": "t", "locations": "https://x"}], "array of non-empty strings"),
        ([{"type": "t", "actions": [""]}], "array of non-empty strings"),
        ([{"type": "t", "identifier": 5}], "identifier"),
        ([{"type": "t", "amount": float("nan")}], "NaN"),
        ([{"type": "t", "when": object()}], "JSON values"),
        ([{"type": "t", 1: "x"}], "names must be strings"),
        ([42], "AuthorizationDetail or a mapping"),
        ({"type": "t"}, "sequence"),
        ("payment_initiation", "sequence"),
    ],
)
def test_untyped_details_follow_the_common_field_rules(details: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        details_to_wire(details)


def test_section_7_comparison() -> None:
    asked = [WIRE]
    enriched = [{**WIRE, "creditorAccount": {"iban": "DE02"}}]  # the server may add members
    assert missing_details(asked, enriched) == []
    assert missing_details(asked, None) == ["payment_initiation"]
    assert missing_details(asked, []) == ["payment_initiation"]
    changed = [{**WIRE, "instructedAmount": {"currency": "EUR", "amount": "1200.00"}}]
    assert missing_details(asked, changed) == ["payment_initiation"]
    fewer_locations = [{**WIRE, "locations": []}]
    assert missing_details(asked, fewer_locations) == ["payment_initiation"]
    other_type = [{**WIRE, "type": "account_information"}]
    assert missing_details(asked, other_type) == ["payment_initiation"]
    assert missing_details([{"type": "t", "n": 1}], [{"type": "t", "n": True}]) == ["t"]
    assert missing_details([{"type": "t", "n": True}], [{"type": "t", "n": 1}]) == ["t"]


def test_details_that_apply_to_a_resource() -> None:
    anywhere = {"type": "agent_action", "tool": "x"}
    here = {**WIRE}
    elsewhere = {**WIRE, "locations": ["https://mail.example/api"]}
    details = [anywhere, here, elsewhere]
    assert details_for_resource(details, "https://payments.example/api") == (anywhere, here)
    assert details_for_resource(details, None) == tuple(details)
    assert merge_details(details, [dict(here)], [anywhere]) == tuple(details)


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_granted_details_from_the_response_or_the_jwt() -> None:
    in_response = TokenResponse(
        access_token=SecretStr("opaque"), token_type="Bearer", authorization_details=[WIRE]
    )
    assert granted_details(in_response) == (WIRE,)
    in_claim = TokenResponse(
        access_token=SecretStr(_jwt({"authorization_details": [WIRE]})), token_type="Bearer"
    )
    assert granted_details(in_claim) == (WIRE,)
    malformed = TokenResponse(
        access_token=SecretStr("opaque"), token_type="Bearer", authorization_details={"a": 1}
    )
    assert granted_details(malformed) is None
    problem = details_problem(malformed, [WIRE], resource="https://payments.example/api")
    assert problem is not None
    assert problem.reason == "authorization_details"
    assert problem.missing_details == ("payment_initiation",)
    assert "ACME" not in str(problem)
    # details for another resource do not apply to this token
    assert details_problem(malformed, [WIRE], resource="https://mail.example/api") is None
    assert details_problem(in_claim, [WIRE], resource="https://payments.example/api") is None
