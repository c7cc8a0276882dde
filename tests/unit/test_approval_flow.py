"""The CIBA approval driver against a fake authorization server (httpx2.MockTransport), with
a fake clock: polling rules, typed outcomes, durable pending requests in the vault, ping
with a poll fallback, single use, and no secret in logs or reprs (security items 40-45)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.lowlevel
import httpx2
import pytest

from agent_identity import (
    Action,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalUnavailable,
    IdentityClient,
    InvalidClient,
    SystemClock,
    TokenPolicyError,
    TokenVault,
)
from agent_identity.approval import PingReceiver, flow, purge_expired
from agent_identity.errors import AuditError
from agent_identity.oauth.ciba import CIBA_GRANT_TYPE

pytestmark = pytest.mark.anyio

ISSUER = "https://as.example"
PAYMENTS = "https://payments.example/api"
PAY = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"})
ACCESS_TOKEN = "canary-access-token-5b1e"


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@dataclass
class FakeAS:
    """Answers the backchannel endpoint and the token endpoint from scripts."""

    clock: FakeClock
    metadata: dict[str, Any] = field(default_factory=dict)
    ack: dict[str, Any] = field(default_factory=lambda: {"expires_in": 120, "interval": 5})
    backchannel_error: tuple[int, str] | None = None
    polls: list[str] = field(default_factory=list)  # error codes, "token" for success
    backchannel: list[dict[str, str]] = field(default_factory=list)
    tokens: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    on_token: Callable[[], None] | None = None
    issued_ids: int = 0
    #: echo the backchannel request's authorization_details in the token (RFC 9396 §7)
    echo_details: bool = True

    def __post_init__(self) -> None:
        self.metadata = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}/authorize",
            "token_endpoint": f"{ISSUER}/token",
            "jwks_uri": f"{ISSUER}/jwks",
            "backchannel_authentication_endpoint": f"{ISSUER}/bc",
            "backchannel_token_delivery_modes_supported": ["poll", "ping"],
            "grant_types_supported": ["authorization_code", CIBA_GRANT_TYPE],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            **self.metadata,
        }
        self.metadata = {k: v for k, v in self.metadata.items() if v is not None}

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.startswith("/.well-known/"):
            return httpx2.Response(200, json=self.metadata)
        form = dict(parse_qsl(request.content.decode()))
        if path == "/bc":
            self.backchannel.append(form)
            if self.backchannel_error is not None:
                status, code = self.backchannel_error
                return httpx2.Response(status, json={"error": code})
            self.issued_ids += 1
            return httpx2.Response(
                200, json={"auth_req_id": f"canary-req-{self.issued_ids}", **self.ack}
            )
        if path == "/token":
            self.tokens.append((self.clock.mono, form))
            if self.on_token is not None:
                self.on_token()
            step = self.polls.pop(0) if self.polls else "authorization_pending"
            if step == "token":
                body: dict[str, Any] = {
                    "access_token": ACCESS_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "payments.write",
                }
                asked = self.backchannel[-1].get("authorization_details")
                if asked and self.echo_details:
                    body["authorization_details"] = json.loads(asked)
                return httpx2.Response(200, json=body)
            return httpx2.Response(400, json={"error": step})
        return httpx2.Response(404)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake.advance(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(flow, "_sleep", fake_sleep)
    fake.sleeps = sleeps  # type: ignore[attr-defined]
    return fake


def client_for(
    server: FakeAS, vault: TokenVault, clock: FakeClock, **kwargs: Any
) -> IdentityClient:
    kwargs.setdefault("client_secret", "canary-client-secret")
    return IdentityClient(
        ISSUER,
        client_id="agent",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server.handler)),
        vault=vault,
        clock=clock,
        **kwargs,
    )


async def pending_rows(vault: TokenVault) -> list[str]:
    return await vault.blob_names(flow.PENDING_KIND)


# -- poll mode -------------------------------------------------------------------------------


async def test_sec_43_poll_pending_slow_down_then_token(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["authorization_pending", "slow_down", "token"])
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        approval = await identity.user("alice").approve(
            action=PAY, scopes=["payments.write"], resource=PAYMENTS
        )
    assert clock.sleeps == [5, 5, 10]  # type: ignore[attr-defined]
    gaps = [b[0] - a[0] for a, b in zip(server.tokens, server.tokens[1:], strict=False)]
    assert gaps == [5, 10]
    sent = server.backchannel[0]
    assert sent["scope"] == "openid payments.write"
    assert sent["login_hint"] == "alice"
    assert sent["resource"] == PAYMENTS
    assert sent["binding_message"].startswith("pay_invoice 120.00 EUR INV-7 · ")
    assert approval.binding_message == sent["binding_message"]
    assert "client_notification_token" not in sent
    assert "authorization_details" not in sent  # not advertised
    assert all(f["grant_type"] == CIBA_GRANT_TYPE for _, f in server.tokens)
    assert {f["auth_req_id"] for _, f in server.tokens} == {"canary-req-1"}
    token = approval.use(PAY)
    assert token.value.get_secret_value() == ACCESS_TOKEN
    assert token.resource == PAYMENTS
    assert await pending_rows(vault) == []


async def test_sec_41_authorization_details_when_the_type_is_supported(clock: FakeClock) -> None:
    server = FakeAS(
        clock,
        metadata={"authorization_details_types_supported": ["payment_initiation", "agent_action"]},
        polls=["token", "token"],
    )
    async with client_for(server, TokenVault.memory(), clock) as identity:
        await identity.user("alice").approve(action=PAY, scopes="payments.write", resource=PAYMENTS)
        # without a resource no details are sent (servers refuse RAR without one)
        await identity.user("alice").approve(action=PAY, scopes="payments.write")
    details = json.loads(server.backchannel[0]["authorization_details"])
    assert details[0]["type"] == "agent_action"
    assert details[0]["tool"] == "pay_invoice"
    assert details[0]["action_hash"] == f"sha-256:{PAY.digest}"
    assert details[0]["locations"] == [PAYMENTS]
    assert "authorization_details" not in server.backchannel[1]


async def test_approval_token_without_the_details_asked_for_is_refused(clock: FakeClock) -> None:
    """RFC 9396 §7: the server must return the authorization_details it granted; a token
    that does not carry those asked for is refused with a typed error."""
    server = FakeAS(
        clock,
        metadata={"authorization_details_types_supported": ["agent_action"]},
        polls=["token"],
        echo_details=False,
    )
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(TokenPolicyError) as caught:
            await identity.user("alice").approve(
                action=PAY, scopes="payments.write", resource=PAYMENTS
            )
    assert caught.value.reason == "authorization_details"
    assert caught.value.missing_details == ("agent_action",)
    assert await pending_rows(vault) == []


async def test_sec_41_explicit_hint_replaces_the_default(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["token"])
    async with client_for(server, TokenVault.memory(), clock) as identity:
        alice = identity.user("alice")
        await alice.approve(
            action=PAY,
            scopes=["payments.write"],
            id_token_hint="eyJ.canary.hint",
            requested_expiry=60,
            acr_values="urn:mfa",
        )
        sent = server.backchannel[0]
        assert "login_hint" not in sent
        assert sent["id_token_hint"] == "eyJ.canary.hint"
        assert (sent["requested_expiry"], sent["acr_values"]) == ("60", "urn:mfa")
        with pytest.raises(Exception, match="at most one"):
            await alice.approve(action=PAY, scopes=[], login_hint="a", id_token_hint="b")


async def test_sec_43_denied(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["authorization_pending", "access_denied"])
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(ApprovalDenied):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(server.tokens) == 2
    assert await pending_rows(vault) == []


@pytest.mark.parametrize("code", ["expired_token", "invalid_grant"])
async def test_sec_43_expired_token_and_invalid_grant_end_it(clock: FakeClock, code: str) -> None:
    server = FakeAS(clock, polls=[code])
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(ApprovalExpired):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(server.tokens) == 1
    assert await pending_rows(vault) == []


async def test_sec_43_no_poll_after_expires_in(clock: FakeClock) -> None:
    server = FakeAS(clock, ack={"expires_in": 12, "interval": 5})
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(ApprovalExpired):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    started = 1000.0
    assert [t for t, _ in server.tokens] == [started + 5, started + 10]
    assert all(t < started + 12 for t, _ in server.tokens)
    assert await pending_rows(vault) == []


async def test_other_oauth_errors_propagate_and_forget_the_request(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["invalid_client"])
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(InvalidClient):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert await pending_rows(vault) == []


# -- unavailable -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "kwargs", "ping"),
    [
        ({"backchannel_authentication_endpoint": None}, {}, False),
        ({"grant_types_supported": ["authorization_code"]}, {}, False),
        ({"backchannel_token_delivery_modes_supported": ["poll"]}, {}, True),
        ({"backchannel_token_delivery_modes_supported": ["ping"]}, {}, False),
        ({}, {"client_secret": None}, False),  # a public client
    ],
)
async def test_sec_41_approval_unavailable_before_any_request(
    clock: FakeClock, metadata: dict[str, Any], kwargs: dict[str, Any], ping: bool
) -> None:
    server = FakeAS(clock, metadata=metadata)
    async with client_for(server, TokenVault.memory(), clock, **kwargs) as identity:
        with pytest.raises(ApprovalUnavailable):
            await identity.user("alice").approve(
                action=PAY, scopes=["payments.write"], ping=PingReceiver() if ping else None
            )
    assert server.backchannel == []
    assert server.tokens == []


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [
        (400, "unknown_user_id", ApprovalUnavailable),
        (400, "unauthorized_client", ApprovalUnavailable),
        (400, "expired_login_hint_token", ApprovalUnavailable),
        (403, "access_denied", ApprovalDenied),
        (401, "invalid_client", InvalidClient),
    ],
)
async def test_sec_42_backchannel_errors_are_typed(
    clock: FakeClock, status: int, code: str, raised: type[Exception]
) -> None:
    server = FakeAS(clock, backchannel_error=(status, code))
    vault = TokenVault.memory()
    async with client_for(server, vault, clock) as identity:
        with pytest.raises(raised) as info:
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    if raised is ApprovalUnavailable:
        assert info.value.error == code  # type: ignore[attr-defined]
    assert server.tokens == []
    assert await pending_rows(vault) == []


# -- security 45: single use, bound to the action --------------------------------------------


async def test_sec_45_approval_is_single_use_and_bound_to_the_action(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["token"])
    async with client_for(server, TokenVault.memory(), clock) as identity:
        approval = await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    other = Action("pay_invoice", {"invoice": "INV-7", "amount": "9999.00 EUR"})
    with pytest.raises(ApprovalMismatch, match="another action"):
        approval.use(other)
    assert not approval.used  # a refused use does not burn the approval
    reordered = Action("pay_invoice", {"amount": "120.00 EUR", "invoice": "INV-7"})
    assert approval.use(reordered).value.get_secret_value() == ACCESS_TOKEN
    assert approval.used
    with pytest.raises(ApprovalMismatch, match="already used"):
        approval.use(PAY)
    assert approval.action_digest == PAY.digest


async def test_sec_45_expired_approved_token_is_not_handed_out(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["token"])
    async with client_for(server, TokenVault.memory(), clock) as identity:
        approval = await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    clock.advance(301)
    with pytest.raises(ApprovalExpired):
        approval.use(PAY)


async def test_each_identical_call_needs_its_own_approval(clock: FakeClock) -> None:
    server = FakeAS(clock, polls=["token", "token"])
    async with client_for(server, TokenVault.memory(), clock) as identity:
        alice = identity.user("alice")
        results = []

        async def one() -> None:
            results.append(await alice.approve(action=PAY, scopes=["payments.write"]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    assert len(results) == 2
    assert len(server.backchannel) == 2  # serialised: the second asked after the first ended
    assert [f["auth_req_id"] for _, f in server.tokens] == ["canary-req-1", "canary-req-2"]


# -- durable pending approvals ---------------------------------------------------------------


class Crash(BaseException):
    """The agent process dies (not an error the flow handles)."""


async def test_pending_approval_resumes_after_restart(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = TokenVault.memory()
    server = FakeAS(clock, polls=["authorization_pending", "slow_down"])

    def crash_after_slow_down() -> None:
        if len(server.tokens) == 3:
            raise Crash

    server.on_token = crash_after_slow_down
    first = client_for(server, vault, clock)
    with pytest.raises(Crash):
        async with first as identity:
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(await pending_rows(vault)) == 1
    row = await vault.get_blob(flow.PENDING_KIND, (await pending_rows(vault))[0])
    assert row is not None
    stored = json.loads(row.data)
    assert stored["interval"] == 10  # slow_down persisted
    assert stored["auth_req_id"] == "canary-req-1"

    server.on_token = None
    server.polls = ["token"]
    clock.sleeps.clear()  # type: ignore[attr-defined]
    async with client_for(server, vault, clock) as identity:
        approval = await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(server.backchannel) == 1  # the user was not asked again
    assert server.tokens[-1][1]["auth_req_id"] == "canary-req-1"
    assert clock.sleeps == [10]  # type: ignore[attr-defined]
    assert approval.use(PAY).value.get_secret_value() == ACCESS_TOKEN
    assert await pending_rows(vault) == []


async def test_expired_pending_approvals_are_cleaned_up(clock: FakeClock) -> None:
    vault = TokenVault.memory()
    server = FakeAS(clock, ack={"expires_in": 60, "interval": 5})

    def crash() -> None:
        raise Crash

    server.on_token = crash
    other = Action("pay_invoice", {"invoice": "INV-8", "amount": "5.00 EUR"})
    for action in (PAY, other):
        with pytest.raises(Crash):
            async with client_for(server, vault, clock) as identity:
                await identity.user("alice").approve(action=action, scopes=["payments.write"])
    with pytest.raises(Crash):
        async with client_for(server, vault, clock) as identity:
            await identity.user("bob").approve(action=PAY, scopes=["payments.write"])
    assert len(await pending_rows(vault)) == 3
    clock.advance(61)
    server.on_token = None
    server.polls = ["token"]
    async with client_for(server, vault, clock) as identity:
        await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(server.backchannel) == 4  # expired: asked again
    rows = await pending_rows(vault)
    assert len(rows) == 1
    assert '"bob"' in rows[0]
    assert await purge_expired(vault, clock=clock) == 1
    assert await pending_rows(vault) == []


async def test_pending_rows_are_encrypted_and_partitioned(clock: FakeClock) -> None:
    vault = TokenVault.memory()
    server = FakeAS(clock)

    def crash() -> None:
        raise Crash

    server.on_token = crash
    with pytest.raises(Crash):
        async with client_for(server, vault, clock, connection="acme-idp") as identity:
            await identity.user("alice", tenant="acme").approve(action=PAY, scopes=["p"])
    (name,) = await pending_rows(vault)
    assert json.loads(name)[:3] == ["acme", "alice", "acme-idp"]
    raw = await vault.store.get(f"{flow.PENDING_KIND}:{name}")
    assert raw is not None
    assert b"canary-req-1" not in raw.blob
    assert b"pay_invoice" not in raw.blob


# -- ping ------------------------------------------------------------------------------------


async def test_sec_44_ping_then_token_and_no_secret_anywhere(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeAS(clock, ack={"expires_in": 120, "interval": 30}, polls=["token"])
    receiver = PingReceiver()
    vault = TokenVault.memory()
    emitted: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="agent_identity"):
        async with client_for(server, vault, clock) as identity:
            alice = identity.user("alice")
            result: dict[str, Any] = {}

            async def run() -> None:
                result["approval"] = await alice.approve(
                    action=PAY, scopes=["payments.write"], ping=receiver
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                with anyio.fail_after(5):
                    while not server.backchannel or not receiver._expected:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                notification_token = server.backchannel[0]["client_notification_token"]
                assert len(notification_token) >= 43
                emitted.append(repr(receiver))
                wrong = await deliver(receiver, "canary-req-1", "W" * 43)
                assert wrong == 401
                await anyio.sleep(0.05)
                assert server.tokens == []  # a wrong bearer never leads to a token request
                assert await deliver(receiver, "canary-req-1", notification_token) == 204
            approval = result["approval"]
            emitted += [repr(approval), repr(identity), repr(alice), approval.binding_message]
            emitted.append(repr(approval.use(PAY)))
    assert len(server.tokens) == 1
    assert clock.sleeps == []  # type: ignore[attr-defined]
    emitted += [r.getMessage() for r in caplog.records]
    emitted += [str(r.args) for r in caplog.records]
    text = "\n".join(emitted)
    for canary in (notification_token, ACCESS_TOKEN, "canary-req-1", "canary-client-secret"):
        assert canary not in text
    assert "CIBA ping refused" in caplog.text


async def deliver(receiver: PingReceiver, auth_req_id: str, bearer: str) -> int:
    body = json.dumps({"auth_req_id": auth_req_id}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"authorization", f"Bearer {bearer}".encode())],
    }
    await receiver(scope, receive, send)
    return status[0]


async def test_sec_44_ping_mode_falls_back_to_polling(clock: FakeClock) -> None:
    real = SystemClock()  # the fallback waits on the notification, in real time
    server = FakeAS(
        clock, ack={"expires_in": 120, "interval": 1}, polls=["authorization_pending", "token"]
    )
    receiver = PingReceiver()
    started = real.monotonic()
    async with client_for(server, TokenVault.memory(), real) as identity:  # type: ignore[arg-type]
        with anyio.fail_after(10):
            approval = await identity.user("alice").approve(
                action=PAY, scopes=["payments.write"], ping=receiver
            )
    # no ping ever came: two polls, each after the 1 s interval
    assert len(server.tokens) == 2
    assert real.monotonic() - started >= 2
    assert approval.use(PAY).value.get_secret_value() == ACCESS_TOKEN
    assert receiver._expected == {}


async def test_a_resumed_approval_is_audited_as_requested_once(clock: FakeClock) -> None:
    """One prompt, one ``approval.requested`` record: resuming the same pending request
    (here after a restart) asks nobody again and writes no second request record."""
    from agent_identity.audit import AuditTrail, MemorySink

    vault = TokenVault.memory()
    sink = MemorySink()
    server = FakeAS(clock, polls=["authorization_pending"])

    def crash() -> None:
        raise Crash

    server.on_token = crash
    async with AuditTrail(sink) as trail:
        with pytest.raises(Crash):
            async with client_for(server, vault, clock, audit=trail) as identity:
                await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
        server.on_token = None
        server.polls = ["token"]
        async with client_for(server, vault, clock, audit=trail) as identity:
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
        await trail.flush()
    kinds = [event.kind for event in sink.events]
    assert len(server.backchannel) == 1
    assert kinds.count("approval.requested") == 1
    assert kinds.count("approval.granted") == 1


async def test_a_request_whose_audit_record_fails_is_continued_not_asked_again(
    clock: FakeClock,
) -> None:
    """A strict trail that cannot write ``approval.requested``: the call fails with
    AuditError, but the request the user's device already shows was kept first, so the
    next call continues it instead of sending a second prompt."""
    from agent_identity.audit import AuditEvent, AuditTrail, MemorySink

    class RefusesRequested(MemorySink):
        async def write(self, events: Any) -> None:
            if any(isinstance(e, AuditEvent) and e.kind == "approval.requested" for e in events):
                raise OSError("disk full")
            await super().write(events)

    vault = TokenVault.memory()
    server = FakeAS(clock, polls=["token"])
    trail = AuditTrail(RefusesRequested(), strict=True)
    async with trail, client_for(server, vault, clock, audit=trail) as identity:
        with pytest.raises(AuditError):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    async with client_for(server, vault, clock) as identity:
        approval = await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert len(server.backchannel) == 1
    assert approval.use(PAY).value.get_secret_value() == ACCESS_TOKEN
