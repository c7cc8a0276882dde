"""Helpers of the LangChain integration tests."""

from __future__ import annotations

from typing import Any

import httpx2
from _helpers import CALENDAR, make_client
from _resource import CalendarAPI

from agent_identity import (
    AccessToken,
    BlockingIdentityClient,
    ConsentFlow,
    ConsentRequired,
    IdentityClient,
    LoopbackConsent,
)
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP


class AsUser:
    """Consent as the user the flow is for (the dev browser signs in as them)."""

    def __init__(self, *, approve: bool = True) -> None:
        self.approve = approve
        self.flows: list[tuple[str, str, tuple[str, ...]]] = []

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.flows.append((flow.tenant, flow.user, flow.scopes))
        browser = DevBrowser(flow.user, approve=self.approve)
        await LoopbackConsent(browser=browser).obtain_consent(flow)


class NoHumanHere:
    """A server-side agent's handler: nobody to ask, so consent is required (to be done
    elsewhere, by the application)."""

    def __init__(self) -> None:
        self.asked = 0

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.asked += 1
        raise ConsentRequired(
            "the user must consent in the application", scopes=flow.scopes, resource=flow.resource
        )


def client(idp: DevIdP, **kwargs: Any) -> IdentityClient:
    kwargs.setdefault("consent", AsUser())
    return make_client(idp, **kwargs)


def blocking_client(idp: DevIdP, **kwargs: Any) -> BlockingIdentityClient:
    secret, _ = DEV_CLIENTS["agent-confidential"]
    kwargs.setdefault("consent", AsUser())
    return BlockingIdentityClient(
        idp.issuer,
        client_id="agent-confidential",
        client_secret=secret,
        allow_insecure_loopback=True,
        **kwargs,
    )


async def calendar_api(idp: DevIdP) -> CalendarAPI:
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{idp.issuer}/jwks")).json()
    return CalendarAPI(issuer=idp.issuer, jwks=jwks)


async def call_calendar(api: CalendarAPI, token: AccessToken, method: str = "GET") -> Any:
    """Call the calendar API (it validates the JWT: signature, iss, aud, exp, scope)."""
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=api), base_url=CALENDAR + "/"
    ) as http:
        response = await http.request(
            method, "events", headers={"Authorization": token.authorization_header()}
        )
    return {"status": response.status_code, **response.json()}
