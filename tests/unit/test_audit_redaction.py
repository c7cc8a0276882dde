"""Security item 40 for the audit trail: no secret reaches any sink, log line or span."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OctKey

from agent_identity.audit import (
    REDACTED,
    AuditEvent,
    AuditTrail,
    FanoutSink,
    JsonFormatter,
    JsonlSink,
    LoggingSink,
    MemorySink,
    OpenTelemetrySink,
    RedactingFilter,
    install_redacting_filter,
    redact,
    redact_text,
)
from agent_identity.audit.redaction import is_secret_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _canaries() -> dict[str, Any]:
    header = _b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": "canary", "jti": secrets.token_hex(16)}).encode())
    jwt = f"{header}.{payload}.{_b64(secrets.token_bytes(64))}"
    ec = ECKey.generate_key("P-256", private=True).as_dict(private=True)
    octet = OctKey.generate_key(256).as_dict(private=True)
    return {
        "jwt": jwt,
        "jwt_payload": payload,
        "bearer": "CANARYBEARER" + secrets.token_hex(12),
        "refresh": "CANARY-RT-" + secrets.token_hex(16),
        "client_secret": "CANARY-CS-" + secrets.token_hex(16),
        "code": "CANARY-CODE-" + secrets.token_hex(8),
        "verifier": "CANARY-VER-" + secrets.token_hex(20),
        "notification": "CANARY-CNT-" + secrets.token_hex(16),
        "ec_jwk": ec,
        "ec_d": ec["d"],
        "oct_jwk": octet,
        "oct_k": octet["k"],
    }


def _memory_log_exporter() -> Any:
    from opentelemetry.sdk._logs import export as log_export

    # renamed in opentelemetry-sdk 1.3x; the old name warns
    name = "InMemoryLogRecordExporter"
    if not hasattr(log_export, name):
        name = "InMemoryLogExporter"
    return getattr(log_export, name)()


def _read_dir(directory: Path) -> str:
    return "".join(p.read_text() for p in sorted(directory.iterdir()))


def _needles(c: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in c.items() if isinstance(v, str)}


def _events(c: dict[str, Any]) -> list[AuditEvent]:
    extra = {
        "refresh_token": c["refresh"],
        "client_secret": c["client_secret"],
        "note": f"Authorization: Bearer {c['bearer']}",
        "id": c["jwt"],
        "d": c["ec_d"],
        "code": c["code"],
        "code_verifier": c["verifier"],
        "client_notification_token": c["notification"],
        "where": f"https://app.example/cb?code={c['code']}&state=abc",
    }
    arguments = {
        "auth": {"refresh_token": c["refresh"], "client_secret": c["client_secret"]},
        "keys": [c["ec_jwk"], c["oct_jwk"]],
        "headers": {"Authorization": f"Bearer {c['bearer']}"},
        "text": f"use bearer {c['bearer']} and {c['jwt']}",
        "body": json.dumps({"refresh_token": c["refresh"], "token_type": "Bearer"}),
        "nested": [[{"password": "CANARY-PW-x", "k": c["oct_k"]}]],
    }
    common: dict[str, Any] = {
        "tenant": "acme",
        "user": "user-1",
        "agent": "agent-canary",
        "binding_message": f"approve {c['jwt']}",
        "extra": extra,
    }
    return [
        AuditEvent.for_tool_call(
            "tool.started", tool="mail", arguments=arguments, include_arguments=True, **common
        ),
        AuditEvent.for_tool_call(
            "tool.failed",
            tool="mail",
            arguments=arguments,
            include_arguments=True,
            outcome="error",
            error_type="InvalidGrant",
            latency_ms=3.0,
            **common,
        ),
        AuditEvent(kind="token.refreshed", outcome="ok", **common),
        AuditEvent(kind="approval.requested", approval_id="appr-1", **common),
    ]


@pytest.fixture
def sdk_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    sdk = logging.getLogger("agent_identity")
    old_level = sdk.level
    sdk.addHandler(handler)
    sdk.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        sdk.removeHandler(handler)
        sdk.setLevel(old_level)
        for flt in list(sdk.filters):
            if isinstance(flt, RedactingFilter):
                sdk.removeFilter(flt)


@pytest.mark.anyio
async def test_sec_40_audit_records_never_hold_secrets(
    tmp_path: Path, sdk_log: io.StringIO
) -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = _memory_log_exporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))

    c = _canaries()
    memory = MemorySink()
    path = tmp_path / "audit.jsonl"
    sink = FanoutSink(
        memory,
        JsonlSink(path, rotate_bytes=4096),
        LoggingSink(),  # installs the redacting filter on the SDK logger and its handlers
        LoggingSink(json=False),
        OpenTelemetrySink(tracer_provider=tracer_provider, logger_provider=logger_provider),
    )
    events = _events(c)
    async with AuditTrail(sink, include_arguments=True) as trail:
        for event in events:
            await trail.emit(event)
        # the SDK's own log lines, with secrets in their arguments
        log = logging.getLogger("agent_identity.client")
        log.info(
            "refreshed %s", {"refresh_token": c["refresh"], "client_secret": c["client_secret"]}
        )
        log.debug("id token %s, header %r", c["jwt"], f"Bearer {c['bearer']}")
        log.warning("jwk %s and callback %s", c["ec_jwk"], f"/cb?code={c['code']}&state=x")
        try:
            raise ValueError(f"boom Bearer {c['bearer']}")
        except ValueError:
            log.exception("failed with %s", c["oct_jwk"])
    assert trail.stats.written == len(events)

    outputs = {
        "jsonl": _read_dir(tmp_path),
        "logging": sdk_log.getvalue(),
        "memory": "".join(e.model_dump_json() + repr(e) + str(e) for e in memory.events),
        "spans": "".join(s.to_json() for s in spans.get_finished_spans()),
        "otel_logs": "".join(r.to_json() for r in logs.get_finished_logs()),
        "repr": repr(trail) + repr(sink),
    }
    assert outputs["jsonl"]
    assert outputs["logging"]
    assert outputs["spans"]
    assert outputs["otel_logs"]
    assert REDACTED in outputs["jsonl"]
    assert REDACTED in outputs["logging"]
    for where, text in outputs.items():
        for name, needle in _needles(c).items():
            assert needle not in text, f"{name} leaked into {where}"
    # the records still say what happened
    assert memory.events[1].tool == "mail"
    assert memory.events[1].error_type == "InvalidGrant"
    assert memory.events[0].extra["where"] == f"https://app.example/cb?code={REDACTED}&state=abc"


def test_redaction_rules() -> None:
    assert redact_text("Authorization: Bearer abc") == f"Authorization: {REDACTED}"
    assert redact_text("bearer abc.def") == f"bearer {REDACTED}"
    assert redact_text("DPoP xyz") == f"DPoP {REDACTED}"
    # JWT-shaped values, but not host names or dotted scopes
    assert redact_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.") == REDACTED
    kept = "api.example.com calendar.events.read v1.2.3 https://a.b/c?state=x&max_tokens=5"
    assert redact_text(kept) == kept
    assert redact({"max_tokens": 5, "token_type": "Bearer", "k": 3, "q": "weather in paris"}) == {
        "max_tokens": 5,
        "token_type": "Bearer",
        "k": 3,
        "q": "weather in paris",
    }
    assert redact({"kty": "RSA", "n": "abc", "e": "AQAB", "d": "x", "p": "y"}) == {
        "kty": "RSA",
        "n": "abc",
        "e": "AQAB",
        "d": REDACTED,
        "p": REDACTED,
    }
    for name in (
        "Refresh-Token",
        "client_secret",
        "password",
        "authorization",
        "code",
        "code_verifier",
        "client_assertion",
        "id_token_hint",
        "private_key",
    ):
        assert is_secret_key(name), name
    for name in ("tool", "state", "scope", "error_code", "token_type", "max_tokens"):
        assert not is_secret_key(name), name


def test_redacting_filter_scrubs_records_for_every_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("agent_identity.test_redaction_filter")
    log.propagate = False
    log.addHandler(handler)
    try:
        flt = install_redacting_filter(log)
        assert install_redacting_filter(log) is flt  # idempotent
        assert flt in handler.filters
        log.warning("token %s body %s", "Bearer s3cr3t-value", {"refresh_token": "rt-value"})
        log.warning("mapping %(refresh_token)s", {"refresh_token": "rt-other"})
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "s3cr3t-value" not in out
    assert "rt-value" not in out
    assert "rt-other" not in out
    assert out.count(REDACTED) == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=15,
)


@given(st.text(max_size=300))
def test_redact_text_is_idempotent_and_total(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(json_values)
def test_redact_never_raises_and_keeps_json(value: Any) -> None:
    json.dumps(redact(value))


@given(st.text(alphabet="ABCDEFabcdef0123456789-_", min_size=16, max_size=60))
def test_bearer_credentials_never_survive(token: str) -> None:
    for template in ("Bearer {}", "Authorization: Bearer {}", "x=1 bearer {} y"):
        assert token not in redact_text(template.format(token))
