"""Rich Authorization Requests (RFC 9396) end to end, with DPoP where it matters.

An action maps to typed ``payment_initiation`` details; the user approves exactly "pay
120.00 EUR to ACME for INV-7" (consent page, PAR, or CIBA on their device); the token
carries the details and the payments API (``_resource.PaymentsAPI``) pays that invoice only.
A token without the details asked for, or for another audience, is refused with a typed
error; details of an unsupported type or that do not validate are refused before anything
is sent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx2
import pytest
from _helpers import MAIL, PAYMENTS, make_client, record_of
from _idp import _install_or_skip
from _resource import PaymentsAPI
from pydantic import BaseModel, ConfigDict, Field

from agent_identity import (
    Action,
    ApprovalDenied,
    ApprovalUnavailable,
    AuthorizationDetail,
    ConfigurationError,
    LoopbackConsent,
    TokenAuth,
    TokenPolicyError,
)
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.devidp import DevBrowser, DevIdP

pytestmark = [pytest.mark.anyio, pytest.mark.idp]


class Amount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    amount: str = Field(pattern=r"^[0-9]+\.[0-9]{2}$")


class PaymentInitiation(AuthorizationDetail):
    """The RFC 9396 §2.1 example type, declared by the developer."""

    type: Literal["payment_initiation"] = "payment_initiation"
    instructed_amount: Amount = Field(alias="instructedAmount")
    creditor_name: str = Field(alias="creditorName", min_length=1)
    remittance_information: str = Field(alias="remittanceInformationUnstructured")

    @classmethod
    def for_action(cls, action: Action) -> PaymentInitiation:
        args = action.arguments
        return cls(
            instructedAmount=Amount(currency=args["currency"], amount=args["amount"]),
            creditorName=args["creditor"],
            remittanceInformationUnstructured=args["invoice"],
            locations=(PAYMENTS,),
            actions=("initiate",),
        )


PAY_INV7 = Action(
    "pay_invoice", {"amount": "120.00", "currency": "EUR", "creditor": "ACME", "invoice": "INV-7"}
)
INV7 = {"amount": "120.00", "currency": "EUR", "creditor": "ACME", "invoice": "INV-7"}
INV8 = {**INV7, "invoice": "INV-8"}
MORE = {**INV7, "amount": "1200.00"}


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    _install_or_skip()
    server = DevIdP(ciba_interval=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fresh(idp: DevIdP) -> AsyncIterator[DevIdP]:
    await idp.clear_requests()
    yield idp
    for name in ("drop_authorization_details", "wrong_audience"):
        await idp.set_quirk(name, False)


async def payments_api(idp: DevIdP, **kwargs: Any) -> PaymentsAPI:
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{idp.issuer}/jwks")).json()
    return PaymentsAPI(issuer=idp.issuer, jwks=jwks, **kwargs)


def api_client(api: PaymentsAPI, auth: httpx2.Auth | None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=api), base_url=PAYMENTS + "/", auth=auth
    )


class Recording:
    """alice's browser, remembering the authorization URLs it opened."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._browser = DevBrowser("alice")

    async def __call__(self, url: str) -> str:
        self.urls.append(url)
        return await self._browser.visit(url)


async def decide(idp: DevIdP, *, approve: bool) -> dict[str, Any]:
    """alice's phone: wait for the CIBA request, then approve or deny it."""
    with anyio.fail_after(10):
        while not (pending := await idp.ciba_pending()):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    (request,) = pending
    if approve:
        await idp.ciba_approve(request["auth_req_id"])
    else:
        await idp.ciba_deny(request["auth_req_id"])
    return dict(request)


# -- consent: front channel and PAR ------------------------------------------------------


@pytest.mark.parametrize("use_par", [True, False])
async def test_rar_consent_token_carries_the_details_and_pays_only_that_invoice(
    fresh: DevIdP, use_par: bool
) -> None:
    idp = fresh
    api = await payments_api(idp)
    browser = Recording()
    details = [PaymentInitiation.for_action(PAY_INV7)]
    async with make_client(
        idp, dpop=True, use_par=use_par, consent=LoopbackConsent(browser=browser)
    ) as identity:
        alice = identity.user("alice")
        await alice.consent(
            scopes=["payments.write"], resource=PAYMENTS, authorization_details=details
        )
        wire = [details[0].to_wire()]
        if use_par:
            (par,) = [
                r for r in await idp.requests() if r["route"] == "pushed_authorization_request"
            ]
            assert par["authorization_details"] == wire
        else:
            query = dict(parse_qsl(urlsplit(browser.urls[0]).query))
            assert json.loads(query["authorization_details"]) == wire
        token = await alice.token(resource=PAYMENTS, scopes=["payments.write"])
        assert token.authorization_details == tuple(wire)
        assert (await record_of(identity, "alice")).authorization_details == tuple(wire)
        auth = alice.http_auth(resource=PAYMENTS, scopes="payments.write")
        async with api_client(api, auth) as http:
            assert (await http.post("payments", json=INV7)).status_code == 200
            assert (await http.post("payments", json=INV8)).status_code == 403
            assert (await http.post("payments", json=MORE)).status_code == 403
        refreshed = await alice.refresh_after_rejection(token)  # the details survive refresh
        assert refreshed.authorization_details == tuple(wire)
    assert api.paid == [INV7]


# -- CIBA: the user approves exactly this payment on their device ----------------------------


async def test_rar_ciba_approval_pays_the_approved_invoice_only(fresh: DevIdP) -> None:
    idp = fresh
    api = await payments_api(idp, require_dpop=True)
    async with make_client(
        idp, dpop=True, action_details={"pay_invoice": PaymentInitiation.for_action}
    ) as identity:
        async with anyio.create_task_group() as tg:
            result: dict[str, Any] = {}

            async def phone() -> None:
                result["request"] = await decide(idp, approve=True)

            tg.start_soon(phone)
            approval = await identity.user("alice").approve(
                action=PAY_INV7, scopes=["payments.write"], resource=PAYMENTS
            )
        shown = result["request"]["authorization_details"]
        assert shown == [PaymentInitiation.for_action(PAY_INV7).to_wire()]
        token = approval.use(PAY_INV7)
        assert token.token_type == "DPoP"
        assert token.authorization_details == tuple(shown)
        async with api_client(api, TokenAuth(token)) as http:
            assert (await http.post("payments", json=INV8)).status_code == 403
            assert (await http.post("payments", json=INV7)).status_code == 200
        stolen = token.value.get_secret_value()
        async with api_client(api, None) as thief:  # the token alone is useless
            for scheme in ("Bearer", "DPoP"):
                response = await thief.post(
                    "payments", json=INV7, headers={"Authorization": f"{scheme} {stolen}"}
                )
                assert response.status_code == 401
    assert api.paid == [INV7]


async def test_rar_ciba_denied(fresh: DevIdP) -> None:
    idp = fresh
    async with (
        make_client(idp, action_details={"pay_invoice": PaymentInitiation.for_action}) as identity,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(functools.partial(decide, idp, approve=False))
        with pytest.raises(ApprovalDenied):
            await identity.user("alice").approve(
                action=PAY_INV7, scopes=["payments.write"], resource=PAYMENTS
            )


# -- a token that does not carry what was asked for is refused --------------------------------


async def test_rar_token_without_the_details_is_refused(fresh: DevIdP) -> None:
    idp = fresh
    await idp.set_quirk("drop_authorization_details", True)
    sink = MemorySink()
    async with (
        AuditTrail(sink) as trail,
        make_client(
            idp, audit=trail, action_details={"pay_invoice": PaymentInitiation.for_action}
        ) as identity,
    ):
        alice = identity.user("alice")
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(decide, idp, approve=True))
            with pytest.raises(TokenPolicyError) as caught:
                await alice.approve(action=PAY_INV7, scopes=["payments.write"], resource=PAYMENTS)
        assert caught.value.reason == "authorization_details"
        assert caught.value.missing_details == ("payment_initiation",)
        # the same for a consented grant: its tokens must carry the grant's details
        await alice.consent(
            scopes=["payments.write"],
            resource=PAYMENTS,
            authorization_details=[PaymentInitiation.for_action(PAY_INV7)],
        )
        with pytest.raises(TokenPolicyError) as caught:
            await alice.token(resource=PAYMENTS, scopes=["payments.write"])
        assert caught.value.reason == "authorization_details"
    refused = [e for e in sink.events if e.kind == "token.details_missing"]
    assert refused
    assert {e.outcome for e in refused} == {"denied"}


async def test_approval_token_for_another_audience_is_refused(fresh: DevIdP) -> None:
    idp = fresh
    await idp.set_quirk("wrong_audience", True)
    async with make_client(idp) as identity, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(decide, idp, approve=True))
        with pytest.raises(TokenPolicyError) as caught:
            await identity.user("alice").approve(
                action=PAY_INV7, scopes=["payments.write"], resource=PAYMENTS
            )
    assert caught.value.reason == "audience"


# -- token exchange ---------------------------------------------------------------------------


async def test_rar_token_exchange_carries_the_details(fresh: DevIdP) -> None:
    idp = fresh
    api = await payments_api(idp)
    detail = PaymentInitiation.for_action(PAY_INV7)
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(
            scopes=["payments.write"], resource=PAYMENTS, authorization_details=[detail]
        )
        exchanged = await alice.exchange(
            resource=PAYMENTS, scopes=["payments.write"], authorization_details=[detail]
        )
        assert exchanged.token_type == "DPoP"
        assert exchanged.authorization_details == (detail.to_wire(),)
        async with api_client(api, TokenAuth(exchanged)) as http:
            assert (await http.post("payments", json=INV7)).status_code == 200
            assert (await http.post("payments", json=INV8)).status_code == 403
    requests = await idp.requests()
    (request,) = [r for r in requests if (r.get("grant_type") or "").endswith("exchange")]
    assert request["authorization_details"] == [detail.to_wire()]


# -- refused before anything is sent ----------------------------------------------------------


async def test_rar_unsupported_or_invalid_details_are_refused_before_sending(
    fresh: DevIdP,
) -> None:
    idp = fresh

    class AccountInformation(AuthorizationDetail):
        type: Literal["account_information"] = "account_information"

    def broken(action: Action) -> PaymentInitiation:
        return PaymentInitiation.for_action(
            Action("pay_invoice", {**action.arguments, "amount": "12"})
        )

    async with make_client(idp, action_details={"pay_invoice": broken}) as identity:
        alice = identity.user("alice")
        with pytest.raises(ApprovalUnavailable, match="account_information"):
            await alice.approve(
                action=PAY_INV7,
                scopes=["payments.write"],
                resource=PAYMENTS,
                authorization_details=[AccountInformation()],
            )
        with pytest.raises(ConfigurationError, match=r"pay_invoice.* are invalid: amount"):
            await alice.approve(action=PAY_INV7, scopes=["payments.write"], resource=PAYMENTS)
        with pytest.raises(ConfigurationError, match="non-empty"):
            await alice.consent(
                scopes=["payments.write"],
                resource=PAYMENTS,
                authorization_details=[{"type": "payment_initiation", "locations": [""]}],
            )
    assert await idp.requests() == []


async def test_rar_device_flow_consent_carries_the_details(fresh: DevIdP) -> None:
    """A headless agent (RFC 8628): the device authorization request asks for the details,
    the user approves them, the token carries them."""
    from agent_identity import DeviceAuthorization, DeviceCodeConsent

    idp = fresh
    detail = PaymentInitiation.for_action(PAY_INV7)
    async with anyio.create_task_group() as tg:

        def prompt(authorization: DeviceAuthorization) -> None:
            tg.start_soon(idp.device_approve, authorization.user_code, "alice")

        async with make_client(
            idp, "agent-public", dpop=True, consent=DeviceCodeConsent(prompt=prompt)
        ) as identity:
            alice = identity.user("alice")
            await alice.consent(
                scopes=["payments.write"], resource=PAYMENTS, authorization_details=[detail]
            )
            token = await alice.token(resource=PAYMENTS, scopes=["payments.write"])
    assert token.token_type == "DPoP"
    assert token.authorization_details == (detail.to_wire(),)


async def test_rar_refresh_narrows_the_details_to_the_token_resource(fresh: DevIdP) -> None:
    """A grant with details for two resources: each resource's token is refreshed with
    the details that name it (RFC 9396 §6.2), and carries those only."""
    idp = fresh
    pay = PaymentInitiation.for_action(PAY_INV7)
    send_mail = {
        "type": "agent_action",
        "tool": "send_mail",
        "action_hash": "sha-256:" + "0" * 64,
        "locations": [MAIL],
    }
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(
            scopes=["payments.write", "mail.send"],
            resources=[PAYMENTS, MAIL],
            authorization_details=[pay, send_mail],
        )
        first = await alice.token(resource=PAYMENTS, scopes=["payments.write"])
        assert len(first.authorization_details or ()) == 2  # the code's token: all of them
        await idp.clear_requests()
        payments = await alice.refresh_after_rejection(first)
        mail = await alice.token(resource=MAIL, scopes=["mail.send"])
    assert payments.authorization_details == (pay.to_wire(),)
    assert mail.authorization_details == (send_mail,)
    sent = [r["authorization_details"] for r in await idp.token_requests("refresh_token")]
    assert sent == [[pay.to_wire()], [send_mail]]
