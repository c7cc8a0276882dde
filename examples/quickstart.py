"""Quickstart: an agent acts for users against the bundled local authorization server.

    python examples/quickstart.py                 # starts the dev server itself
    python examples/quickstart.py --issuer URL    # or use one started with `agent-identity dev-idp`

What it shows, end to end, with real OAuth traffic:

1. alice consents (authorization code + PKCE through the loopback consent handler; the
   dev server's headless browser plays alice clicking "approve");
2. a calendar tool gets its own narrow token: bound to the calendar API, read-only;
3. a second tool needs a scope alice has not granted: incremental consent for the union;
4. bob, on a headless agent, consents with the device flow;
5. the agent's own token (client credentials), and a token exchange (RFC 8693) that
   makes the agent the actor of alice's token: a delegation chain;
   then a payment tool asks alice to approve on her phone (OpenID CIBA): the approval is
   bound to that exact payment and its token can be used once;
6. a restart: a new client finds alice's grant in the encrypted SQLite vault (the
   embedded default, in the user data directory) and needs no consent;
7. alice disconnects (RFC 7009): revoked at the server, then removed from the vault.

In a real deployment you drop the DevBrowser: LoopbackConsent() opens the user's browser.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from agent_identity import (
    Action,
    ConsentFlow,
    DelegationChain,
    DeviceAuthorization,
    DeviceCodeConsent,
    IdentityClient,
    LoopbackConsent,
)
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

CALENDAR = "https://calendar.example/api"
MAIL = "https://mail.example/api"
PAYMENTS = "https://payments.example/api"
CLIENT_ID = "agent-confidential"


def show(step: str, detail: str = "") -> None:
    print(f"  \u2713 {step}" + (f"\n      {detail}" if detail else ""), flush=True)


def describe(token_value: str) -> str:
    # Access tokens are opaque to the SDK; the dev server issues JWTs, which we peek at
    # here only to show what the resource will see. Never use unverified claims to decide.
    claims = peek_claims(token_value)
    return f"aud={claims.get('aud')} sub={claims.get('sub')} scope={claims.get('scope')!r}"


class NoConsentNeeded:
    """A consent handler that proves a point: it is never called."""

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        raise RuntimeError("unexpected consent: the grant should come from the vault")


async def run(issuer: str) -> None:
    secret = DEV_CLIENTS[CLIENT_ID][0]
    print(f"agent-identity quickstart against {issuer}\n")
    async with IdentityClient(
        issuer,
        client_id=CLIENT_ID,
        client_secret=secret,
        consent=LoopbackConsent(browser=DevBrowser("alice")),
        allow_insecure_loopback=True,  # the dev server runs on http://127.0.0.1
    ) as identity:
        show("discovered the authorization server", f"issuer={identity.metadata.issuer}")

        alice = identity.user("alice", tenant="acme")
        grant = await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        show(
            "alice consented (authorization code + PKCE, state, RFC 9207 iss checked)",
            f"subject={grant.subject} scopes={' '.join(grant.scopes)} "
            f"refresh_token={'yes' if grant.has_refresh_token else 'no'}",
        )

        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        show("the calendar tool got its own narrow token", describe(token.value.get_secret_value()))

        writer = await alice.token(resource=CALENDAR, scopes=["calendar.write"])
        show(
            "a tool needing calendar.write triggered incremental consent, then got its token",
            describe(writer.value.get_secret_value()),
        )

        async with anyio.create_task_group() as tg:

            def on_device_code(authorization: DeviceAuthorization) -> None:
                show(
                    "bob's headless agent shows a device code",
                    f"visit {authorization.verification_uri} and enter {authorization.user_code}",
                )
                tg.start_soon(
                    DevBrowser("bob").complete_device,
                    authorization.verification_uri,
                    authorization.user_code,
                )

            bob = identity.user("bob", tenant="acme")
            await bob.consent(
                scopes=["openid", "mail.read"],
                resource=MAIL,
                handler=DeviceCodeConsent(prompt=on_device_code),
            )
        mail = await bob.token(resource=MAIL, scopes=["mail.read"])
        show(
            "bob approved on his phone; the mail tool got its token",
            describe(mail.value.get_secret_value()),
        )

        own = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        show("the agent's own token (client credentials)", describe(own.value.get_secret_value()))

        delegated = await alice.exchange(resource=CALENDAR, scopes=["calendar.read"])
        chain = DelegationChain.from_token(delegated.value)
        show(
            "token exchange (RFC 8693): the agent acts for alice",
            f"delegation chain: {chain.describe()}",
        )

        # A high-impact tool: alice must approve on her own device. The dev server's hooks
        # play her phone here.
        phone = DevIdP.connect(issuer)
        payment = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"})

        async def alice_taps_approve() -> None:
            with anyio.fail_after(30):
                while not (pending := await phone.ciba_pending()):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            show("alice's phone asks her", f"approve? {pending[0]['binding_message']}")
            await phone.ciba_approve(pending[0]["auth_req_id"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(alice_taps_approve)
            approval = await alice.approve(
                action=payment, scopes=["payments.write"], resource=PAYMENTS
            )
        pay_token = approval.use(payment)  # once, for this exact payment only
        show(
            "alice approved (CIBA); the payment tool got a single-use token",
            describe(pay_token.value.get_secret_value()),
        )

    # A restart: a new client on the same (default, encrypted SQLite) vault.
    async with IdentityClient(
        issuer,
        client_id=CLIENT_ID,
        client_secret=secret,
        consent=NoConsentNeeded(),
        allow_insecure_loopback=True,
    ) as identity:
        alice = identity.user("alice", tenant="acme")
        again = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        show(
            "after a restart, alice's grant came from the encrypted vault: no consent",
            describe(again.value.get_secret_value()),
        )
        await alice.disconnect()
        show("alice disconnected: refresh token revoked at the server, grant removed")
    print("\nDone.")


def main() -> int:
    parser = argparse.ArgumentParser(description="agent-identity quickstart")
    parser.add_argument("--issuer", help="use a running dev server instead of starting one")
    args = parser.parse_args()
    if args.issuer:
        anyio.run(run, args.issuer)
        return 0
    print("starting the local authorization server (dev only)...", file=sys.stderr, flush=True)
    with DevIdP() as idp:
        anyio.run(run, idp.issuer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
