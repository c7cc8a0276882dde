"""The tool guard's audit guarantees (security item 40; issue 12 item 11): every
invocation is recorded whatever its arguments hold, and with a strict trail a record that
cannot be written stops the tool before it runs. The caller only ever sees typed errors.

No authorization server is needed: these calls name no resource, so no token is fetched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_identity import ApprovalPolicy, IdentityClient
from agent_identity.audit import (
    AuditEvent,
    AuditTrail,
    JsonlSink,
    MemorySink,
    arguments_hash,
    verify_chain,
)
from agent_identity.errors import AgentIdentityError, AuditError, ConfigurationError
from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement

pytestmark = pytest.mark.anyio

NO_TOKEN = ToolRequirement()


class FailingSink(MemorySink):
    async def write(self, events: Sequence[AuditEvent]) -> None:
        raise OSError(28, "No space left on device")


@asynccontextmanager
async def identity() -> AsyncIterator[IdentityClient]:
    client = IdentityClient("https://as.example", client_id="agent")
    try:
        yield client
    finally:
        await client.aclose()


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


ODD_ARGUMENTS = [
    pytest.param({"text": "\ud800"}, id="lone-surrogate"),
    pytest.param({"\udc80key": 1}, id="surrogate-name"),
    pytest.param({"n": 10**5000}, id="5000-digit-integer"),
    pytest.param({"x": float("nan"), "y": float("inf")}, id="nan-inf"),
    pytest.param({"loop": _cyclic()}, id="cycle"),
    pytest.param({"deep": _nested(5000)}, id="nested-5000"),
    pytest.param({"obj": _BadRepr()}, id="repr-raises"),
    pytest.param({1: "int key", (2, 3): "tuple key"}, id="non-string-names"),
    pytest.param({"ctl": "\x00\x1b[2J\u202e"}, id="control-characters"),
]


@pytest.mark.parametrize("arguments", ODD_ARGUMENTS)
@pytest.mark.parametrize("include_arguments", [False, True])
async def test_every_invocation_is_recorded_whatever_the_arguments(
    arguments: dict[Any, Any], include_arguments: bool, tmp_path: Path
) -> None:
    memory = MemorySink()
    path = tmp_path / "audit.jsonl"
    ran: list[str] = []

    async def tool() -> str:
        ran.append("ran")
        return "done"

    for sink, strict in ((memory, False), (JsonlSink(path), True)):
        async with identity() as client, AuditTrail(sink, strict=strict) as trail:
            guard = ToolGuard(client, audit=trail, include_arguments=include_arguments)
            call = ToolCall("odd_tool", arguments, user="alice")
            assert await guard.run(call, NO_TOKEN, tool) == "done"
    assert ran == ["ran", "ran"]
    (record,) = memory.events
    assert record.kind == "tool.succeeded"
    assert record.arguments_hash == arguments_hash(arguments)
    json.dumps(record.to_json_dict()).encode("utf-8")  # any sink can write it
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["event"]["kind"] for line in lines] == [
        "tool.started",
        "tool.succeeded",
    ]
    assert verify_chain([path]).ok


def test_arguments_hash_tells_a_lone_surrogate_from_its_replacement() -> None:
    assert arguments_hash({"a": "\ud800"}) != arguments_hash({"a": "\ufffd"})
    assert arguments_hash({"a": "\ud800"}) == arguments_hash({"a": "\ud800"})
    assert arguments_hash({"n": 10**5000}) != arguments_hash({"n": 10**5000 + 1})


async def test_strict_trail_that_cannot_write_stops_the_tool_before_it_runs() -> None:
    ran: list[str] = []

    async def tool() -> str:
        ran.append("ran")
        return "done"

    async with identity() as client, AuditTrail(FailingSink(), strict=True) as trail:
        guard = ToolGuard(client, audit=trail)
        with pytest.raises(AuditError):
            await guard.run(ToolCall("pay", {"amount": 5}, user="alice"), NO_TOKEN, tool)
    assert ran == []


async def test_strict_trail_records_start_then_outcome() -> None:
    sink = MemorySink()

    async def tool() -> str:
        raise RuntimeError("tool failed")

    async with identity() as client, AuditTrail(sink, strict=True) as trail:
        guard = ToolGuard(client, audit=trail)
        with pytest.raises(RuntimeError):
            await guard.run(ToolCall("pay", {"amount": 5}, user="alice"), NO_TOKEN, tool)
    started, failed = sink.events
    assert (started.kind, started.outcome) == ("tool.started", None)
    assert (failed.kind, failed.outcome, failed.error_type) == (
        "tool.failed",
        "error",
        "RuntimeError",
    )
    assert started.arguments_hash == failed.arguments_hash == arguments_hash({"amount": 5})


async def test_normal_trail_keeps_one_record_per_invocation() -> None:
    sink = MemorySink()

    async def tool() -> str:
        return "done"

    async with identity() as client, AuditTrail(sink) as trail:
        guard = ToolGuard(client, audit=trail)
        await guard.run(ToolCall("t", {}, user="alice"), NO_TOKEN, tool)
        await trail.flush()
    assert [e.kind for e in sink.events] == ["tool.succeeded"]


async def test_approval_of_odd_arguments_is_a_typed_error_and_still_recorded() -> None:
    """An approval binds the exact call; arguments that cannot be hashed as UTF-8 JSON
    cannot be approved: the caller gets ConfigurationError, the tool does not run, and the
    record says so."""
    sink = MemorySink()
    ran: list[str] = []

    async def tool() -> str:
        ran.append("ran")
        return "paid"

    requirement = ToolRequirement(approval=ApprovalPolicy(always=["pay"]))
    async with identity() as client, AuditTrail(sink) as trail:
        guard = ToolGuard(client, audit=trail)
        for arguments in ({"memo": "\ud800"}, {"amount": 10**5000}):
            with pytest.raises(ConfigurationError):
                await guard.run(ToolCall("pay", arguments, user="alice"), requirement, tool)
        await trail.flush()
    assert ran == []
    assert [(e.kind, e.error_type) for e in sink.events] == [
        ("tool.failed", "ConfigurationError"),
        ("tool.failed", "ConfigurationError"),
    ]


@pytest.mark.parametrize(
    ("tool", "user"),
    [("t\ud800", "alice"), ("t", "al\x00ice"), ("x" * 2000, "alice"), ("t", "a\nb")],
)
def test_tool_call_names_must_be_printable(tool: str, user: str) -> None:
    with pytest.raises(ConfigurationError):
        ToolCall(tool, {}, user=user)


async def test_a_record_that_cannot_be_built_is_a_typed_error_in_strict_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> AuditEvent:
        raise ValueError("cannot build")

    monkeypatch.setattr(AuditEvent, "for_tool_call", broken)
    ran: list[str] = []

    async def tool() -> str:
        ran.append("ran")
        return "done"

    async with identity() as client:
        async with AuditTrail(MemorySink(), strict=True) as trail:
            with pytest.raises(AuditError) as info:
                await ToolGuard(client, audit=trail).run(
                    ToolCall("t", {}, user="alice"), NO_TOKEN, tool
                )
        assert isinstance(info.value, AgentIdentityError)
        assert ran == []
        async with AuditTrail(MemorySink()) as trail:  # normal mode: logged, never raised
            assert (
                await ToolGuard(client, audit=trail).run(
                    ToolCall("t", {}, user="alice"), NO_TOKEN, tool
                )
                == "done"
            )


# -- what the guard asks for and records (mutation testing: docs/security.md) -----------------


def _jwt(claims: dict[str, Any]) -> str:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"ES256"}')
    return f"{header}.{b64(json.dumps(claims).encode())}.c2ln"


#: An exchanged token names the agent as the current actor (RFC 8693 §4.1).
EXCHANGED = _jwt({"sub": "alice", "act": {"sub": "agent-1", "act": {"sub": "orchestrator"}}})


class _User:
    """Stands in for UserIdentity: hands out tokens and approvals, records the requests."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    def _token(self, resource: str | None, scopes: tuple[str, ...], value: str) -> Any:
        from pydantic import SecretStr

        from agent_identity.models import AccessToken

        return AccessToken(
            value=SecretStr(value), token_type="Bearer", issuer="https://as.example",
            resource=resource, scopes=scopes, expires_at=None, received_at=0.0,
        )  # fmt: skip

    async def token(self, *, resource: str, scopes: tuple[str, ...]) -> Any:
        self.log.append(("token", (resource, tuple(scopes))))
        return self._token(resource, ("granted",), "TOKEN-PLAIN")

    async def exchange(self, *, resource: str, scopes: tuple[str, ...]) -> Any:
        self.log.append(("exchange", (resource, tuple(scopes))))
        return self._token(resource, ("granted",), EXCHANGED)

    async def approve(
        self, *, action: Any, scopes: tuple[str, ...], resource: str | None, **options: Any
    ) -> Any:
        from agent_identity.approval.flow import Approval
        from agent_identity.clock import SystemClock

        self.log.append(("approve", (action.tool, dict(action.arguments), tuple(scopes), resource)))
        token = self._token(resource, ("granted",), "TOKEN-APPROVED")
        return Approval(
            action=action, token=token, binding_message="pay 5 · K7Q2", subject=None,
            clock=SystemClock(),
        )  # fmt: skip


class _Identity:
    client_id = "agent-1"
    issuer = "https://as.example"

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def user(self, user_id: str, *, tenant: str = "default") -> _User:
        self.log.append(("user", (user_id, tenant)))
        return _User(self.log)


@pytest.mark.parametrize("delegate", [False, True])
async def test_the_tool_gets_the_narrow_token_and_the_record_says_so(delegate: bool) -> None:
    from agent_identity.audit import fingerprint
    from agent_identity.tools import current_token, current_tool_context

    identity = _Identity()
    sink = MemorySink()
    seen: list[Any] = []

    async def tool() -> str:
        seen.append((current_token().value.get_secret_value(), current_tool_context().call))
        return "ok"

    requirement = ToolRequirement(resource="https://api.example", scopes="read write",
                                  delegate=delegate)  # fmt: skip
    assert requirement.scopes == ("read", "write")
    call = ToolCall("list", {"day": "mon"}, user="alice", tenant="acme")
    async with AuditTrail(sink, strict=True) as trail:
        guard = ToolGuard(identity, audit=trail)  # type: ignore[arg-type]
        assert await guard.run(call, requirement, tool) == "ok"
    value = EXCHANGED if delegate else "TOKEN-PLAIN"
    assert seen == [(value, call)]
    kind = "exchange" if delegate else "token"
    assert identity.log == [
        ("user", ("alice", "acme")), (kind, ("https://api.example", ("read", "write")))
    ]  # fmt: skip
    started, done = sink.events
    for record in (started, done):
        assert (record.tool, record.tenant, record.user) == ("list", "acme", "alice")
        assert (record.agent, record.issuer) == ("agent-1", "https://as.example")
        assert record.resource == "https://api.example"
        assert record.scopes_requested == ("read", "write")
        assert record.scopes_granted == ("granted",)
        assert record.token_fingerprint == fingerprint(value)
        assert record.arguments is None
    assert done.outcome == "ok"
    assert done.error_type is None
    assert started.actors == done.actors == (("agent-1", "orchestrator") if delegate else ())
    assert done.latency_ms is not None
    assert 0 <= done.latency_ms < 60_000


async def test_approved_calls_use_the_approval_for_that_exact_action() -> None:
    from agent_identity.tools import current_token, current_tool_context

    identity = _Identity()
    sink = MemorySink()
    seen: list[Any] = []

    async def tool() -> str:
        context = current_tool_context()
        seen.append((current_token().value.get_secret_value(), context.approval is not None))
        return "paid"

    policy = ApprovalPolicy(when={"pay": ApprovalPolicy.above("amount", 1)})
    requirement = ToolRequirement(resource="https://pay.example", scopes=("pay",),
                                  approval=policy)  # fmt: skip
    async with AuditTrail(sink, include_arguments=True, strict=True) as trail:
        guard = ToolGuard(identity, audit=trail, include_arguments=True)  # type: ignore[arg-type]
        assert guard.include_arguments is True
        call = ToolCall("pay", {"amount": 5}, user="alice")
        assert await guard.run(call, requirement, tool) == "paid"
        await trail.flush()
    assert seen == [("TOKEN-APPROVED", True)]
    assert identity.log[1] == ("approve", ("pay", {"amount": 5}, ("pay",), "https://pay.example"))
    started, record = sink.events
    assert record.approval_id is not None
    assert len(record.approval_id) == 16
    assert started.approval_id == record.approval_id
    assert record.binding_message == "pay 5 · K7Q2"
    assert record.arguments == {"amount": 5}
    # below the threshold: the policy reads the call's arguments, no approval is asked
    async with AuditTrail(MemorySink()) as trail:
        small = ToolCall("pay", {"amount": 1}, user="alice")
        assert await ToolGuard(identity, audit=trail).run(small, requirement, tool) == "paid"  # type: ignore[arg-type]
    assert [entry[0] for entry in identity.log].count("approve") == 1
    assert identity.log[-1][0] == "token"


async def test_refused_consent_is_recorded_as_denied() -> None:
    from agent_identity.errors import ConsentRequired

    class _Refusing(_User):
        async def token(self, *, resource: str, scopes: tuple[str, ...]) -> Any:
            raise ConsentRequired("consent needed", scopes=tuple(scopes), resource=resource)

    identity = _Identity()
    identity.user = lambda user_id, tenant="default": _Refusing(identity.log)  # type: ignore[method-assign]
    sink = MemorySink()

    async def tool() -> str:
        return "never"

    async with AuditTrail(sink) as trail:
        with pytest.raises(ConsentRequired):
            await ToolGuard(identity, audit=trail).run(  # type: ignore[arg-type]
                ToolCall("t", {}, user="u"), ToolRequirement(resource="https://api.example"), tool
            )
        await trail.flush()
    (record,) = sink.events
    assert (record.kind, record.outcome, record.error_type) == (
        "tool.denied", "denied", "ConsentRequired"
    )  # fmt: skip


async def test_guard_defaults_and_failures_in_the_record() -> None:
    identity = _Identity()
    sink = MemorySink()

    async def broken() -> str:
        raise RuntimeError("down")

    async with AuditTrail(sink, include_arguments=True) as trail:
        guard = ToolGuard(identity, audit=trail)  # type: ignore[arg-type]
        assert guard.include_arguments is False
        with pytest.raises(RuntimeError):
            await guard.run(ToolCall("t", {"a": 1}, user="u"), NO_TOKEN, broken)
        await trail.flush()
    (record,) = sink.events
    assert (record.kind, record.outcome, record.error_type) == (
        "tool.failed",
        "error",
        "RuntimeError",
    )
    assert record.arguments is None  # the guard did not opt in
    assert record.token_fingerprint is None
    assert record.scopes_granted is None


def test_tool_call_and_requirement_rules() -> None:
    assert ToolCall("t" * 1024, {}, user="u").tool == "t" * 1024
    for user, tenant in (("", "acme"), ("alice", "")):
        with pytest.raises(ConfigurationError):
            ToolCall("t", {}, user=user, tenant=tenant)
    with pytest.raises(ConfigurationError):
        ToolRequirement(scopes=("read",))
    assert ToolRequirement(resource="https://api.example", scopes=()).scopes == ()


@pytest.mark.parametrize("strict", [False, True])
async def test_a_refusal_whose_record_cannot_be_built_is_logged_not_replaced(
    strict: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """refuse() for values the record refuses (a 2,000-character tool name, a user with a
    lone surrogate: what ToolCall itself refuses): no foreign ValidationError replaces the
    caller's refusal; the record's problem is logged by its type, without the values."""
    sink = MemorySink()
    async with identity() as client, AuditTrail(sink, strict=strict) as trail:
        guard = ToolGuard(client, audit=trail)
        for tool, user in (("t" * 2000, "alice"), ("pay", "al\ud800ice")):
            await guard.refuse(
                tool=tool,
                arguments={},
                requirement=NO_TOKEN,
                error=ConfigurationError("bad call"),
                user=user,
            )
    assert sink.events == []
    problems = [r.getMessage() for r in caplog.records if "could not be built" in r.getMessage()]
    assert problems == ["audit record of a tool call could not be built (ValidationError)"] * 2
