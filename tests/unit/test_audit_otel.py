"""OpenTelemetry sink: GenAI execute_tool spans, log records, lazy import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk import _logs as sdk_logs
from opentelemetry.sdk._logs import export as log_export
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from agent_identity.audit import AuditEvent, AuditTrail, OpenTelemetrySink

pytestmark = pytest.mark.anyio


def _memory_log_exporter() -> Any:
    # renamed in opentelemetry-sdk 1.3x; the old name warns
    name = "InMemoryLogRecordExporter"
    if not hasattr(log_export, name):
        name = "InMemoryLogExporter"
    return getattr(log_export, name)()


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, Any, Any]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    exporter_cls = (
        getattr(log_export, "InMemoryLogRecordExporter", None) or log_export.InMemoryLogExporter
    )
    logs = exporter_cls()
    logger_provider = sdk_logs.LoggerProvider()
    logger_provider.add_log_record_processor(log_export.SimpleLogRecordProcessor(logs))
    yield tracer_provider, spans, logger_provider, logs
    tracer_provider.shutdown()


async def test_tool_event_becomes_an_execute_tool_span(otel: Any) -> None:
    tracer_provider, spans, logger_provider, _ = otel
    sink = OpenTelemetrySink(tracer_provider=tracer_provider, logger_provider=logger_provider)
    tracer = tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("agent turn") as parent:
        event = AuditEvent.for_tool_call(
            "tool.succeeded",
            tool="calendar.create_event",
            arguments={"title": "x"},
            tenant="acme",
            user="user-1",
            agent="agent-client",
            issuer="https://as.example",
            resource="https://calendar.example/api",
            scopes_requested=["calendar.write"],
            scopes_granted=["calendar.write"],
            approval_id="appr-7",
            outcome="ok",
            latency_ms=12.5,
        )
    parent_ctx = parent.get_span_context()
    assert event.trace_id == f"{parent_ctx.trace_id:032x}"
    assert event.span_id == f"{parent_ctx.span_id:016x}"
    async with AuditTrail(sink) as trail:  # written later, from the background task
        await trail.emit(event)

    tool_spans = [s for s in spans.get_finished_spans() if s.name.startswith("execute_tool")]
    assert len(tool_spans) == 1
    span = tool_spans[0]
    attrs = dict(span.attributes or {})
    assert span.name == "execute_tool calendar.create_event"
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "calendar.create_event"
    assert attrs["agent_identity.tenant"] == "acme"
    assert attrs["agent_identity.user"] == "user-1"
    assert attrs["agent_identity.issuer"] == "https://as.example"
    assert attrs["agent_identity.resource"] == "https://calendar.example/api"
    assert tuple(attrs["agent_identity.scopes_granted"]) == ("calendar.write",)
    assert attrs["agent_identity.outcome"] == "ok"
    assert attrs["agent_identity.approval_id"] == "appr-7"
    assert "gen_ai.tool.call.arguments" not in attrs  # not opted in
    assert span.kind == trace.SpanKind.INTERNAL
    # nested under the span that was active when the record was made
    assert span.parent is not None
    assert span.parent.span_id == parent_ctx.span_id
    assert span.context.trace_id == parent_ctx.trace_id
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time - span.start_time == 12_500_000


async def test_failed_and_denied_tools_have_error_status(otel: Any) -> None:
    tracer_provider, spans, logger_provider, _ = otel
    sink = OpenTelemetrySink(tracer_provider=tracer_provider, logger_provider=logger_provider)
    await sink.write(
        [
            AuditEvent(kind="tool.failed", tool="a", outcome="error", error_type="TimeoutError"),
            AuditEvent(kind="tool.denied", tool="b", outcome="denied"),
        ]
    )
    by_name = {s.name: s for s in spans.get_finished_spans()}
    failed, denied = by_name["execute_tool a"], by_name["execute_tool b"]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "TimeoutError"
    assert denied.status.status_code == StatusCode.ERROR
    assert (denied.attributes or {})["error.type"] == "denied"
    assert failed.parent is None  # no trace context in the record: a root span


async def test_other_events_become_log_records(otel: Any) -> None:
    tracer_provider, spans, logger_provider, logs = otel
    sink = OpenTelemetrySink(tracer_provider=tracer_provider, logger_provider=logger_provider)
    await sink.write(
        [
            AuditEvent(kind="token.exchanged", resource="https://r.example", outcome="ok"),
            AuditEvent(kind="tool.started", tool="a"),
            AuditEvent(kind="approval.denied", outcome="denied", approval_id="x"),
        ]
    )
    assert spans.get_finished_spans() == ()
    records = [item.log_record for item in logs.get_finished_logs()]
    assert [r.body for r in records] == ["token.exchanged", "tool.started", "approval.denied"]
    attrs = dict(records[0].attributes or {})
    assert attrs["event.name"] == "agent_identity.token.exchanged"
    assert attrs["agent_identity.resource"] == "https://r.example"
    assert records[2].severity_text == "WARN"


def test_importing_audit_does_not_import_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import agent_identity.audit\n"
        "from agent_identity.audit import AuditEvent, AuditTrail, JsonlSink\n"
        "AuditEvent(kind='tool.started')\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
