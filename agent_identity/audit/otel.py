"""OpenTelemetry audit sink (extra ``agent-identity-sdk[otel]``).

Only this module touches ``opentelemetry``, and only when an :class:`OpenTelemetrySink` is
built (or when OpenTelemetry was already imported by the application): importing
:mod:`agent_identity.audit` never imports it.

Mapping (OpenTelemetry semantic conventions for GenAI, "execute_tool" spans):

- ``tool.succeeded``, ``tool.failed`` and ``tool.denied`` each become one span named
  ``execute_tool {tool}`` (kind INTERNAL) with ``gen_ai.operation.name="execute_tool"``,
  ``gen_ai.tool.name``, ``gen_ai.agent.id`` (the agent's client id), ``error.type`` on
  failure and denial, ``gen_ai.tool.call.arguments`` only when the record holds the
  (opted-in, redacted) arguments, plus ``agent_identity.*`` attributes (tenant, user,
  actors, issuer, resource, scopes_requested, scopes_granted, outcome, approval_id,
  arguments_hash, token_fingerprint, event_id, kind, ``extra.<name>``). The span ends at the
  record's ``time`` and starts ``latency_ms`` earlier; its status is ERROR unless the
  outcome is ``ok``. Its parent is the span that was active when the record was created
  (``trace_id``/``span_id``), so it nests under the agent's own trace although it is
  written later, from the audit trail's background task. The parent is assumed sampled.
- every other record (``tool.started``, consent, elevation, token, approval and
  revocation records) becomes an OpenTelemetry *log record* (Logs API) with
  ``event_name``/``event.name`` ``agent_identity.<kind>``, the same attributes, the
  record's trace context, severity INFO (WARN for ``denied``/``error`` outcomes). A
  ``tool.started`` record gets no span: the span of its terminal record covers the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_identity.audit.events import AuditEvent, canonical_json
from agent_identity.audit.spans import current_span_ids
from agent_identity.errors import ConfigurationError

__all__ = ["OpenTelemetrySink", "current_span_ids"]

_TOOL_SPAN_KINDS = frozenset({"tool.succeeded", "tool.failed", "tool.denied"})


def _attributes(event: AuditEvent) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "agent_identity.kind": event.kind,
        "agent_identity.event_id": event.event_id,
    }
    plain = {
        "tenant": event.tenant,
        "user": event.user,
        "agent": event.agent,
        "issuer": event.issuer,
        "resource": event.resource,
        "outcome": event.outcome,
        "approval_id": event.approval_id,
        "tool": event.tool,
        "arguments_hash": event.arguments_hash,
        "token_fingerprint": event.token_fingerprint,
        "error_type": event.error_type,
        "latency_ms": event.latency_ms,
    }
    for name, value in plain.items():
        if value is not None:
            attrs[f"agent_identity.{name}"] = value
    if event.actors:
        attrs["agent_identity.actors"] = list(event.actors)
    if event.scopes_requested is not None:
        attrs["agent_identity.scopes_requested"] = list(event.scopes_requested)
    if event.scopes_granted is not None:
        attrs["agent_identity.scopes_granted"] = list(event.scopes_granted)
    for name, extra in event.extra.items():
        if extra is not None:
            attrs[f"agent_identity.extra.{name}"] = extra
    return attrs


def _ns(event: AuditEvent) -> int:
    return int(event.time.timestamp() * 1_000_000_000)


class OpenTelemetrySink:
    """Writes audit records as OpenTelemetry spans and log records (see the module doc).

    ``tracer_provider``/``logger_provider`` default to the global providers. Raises
    :class:`~agent_identity.errors.ConfigurationError` if OpenTelemetry is not installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: Any | None = None,
        logger_provider: Any | None = None,
        instrumentation_name: str = "agent_identity.audit",
    ) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry._logs import get_logger_provider
        except ImportError:
            raise ConfigurationError(
                "OpenTelemetrySink needs the 'otel' extra: pip install 'agent-identity-sdk[otel]'"
            ) from None
        from agent_identity._version import __version__

        tp = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        lp = logger_provider if logger_provider is not None else get_logger_provider()
        self._tracer = tp.get_tracer(instrumentation_name, __version__)
        self._logger = lp.get_logger(instrumentation_name, __version__)

    def __repr__(self) -> str:
        return "OpenTelemetrySink()"

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Emit each record as a span or a log record (synchronous, non-blocking: the
        OpenTelemetry SDK exports from its own processors)."""
        for event in events:
            if event.kind in _TOOL_SPAN_KINDS:
                self._span(event)
            else:
                self._log(event)

    async def aclose(self) -> None:
        """Nothing to release: the providers belong to the application."""

    def _parent(self, event: AuditEvent) -> Any:
        from opentelemetry import context, trace

        if event.trace_id is None or event.span_id is None:
            return context.Context()  # a new root, not the writer task's context
        span_context = trace.SpanContext(
            trace_id=int(event.trace_id, 16),
            span_id=int(event.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context))

    def _span(self, event: AuditEvent) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tool = event.tool or "unknown"
        attrs = _attributes(event)
        attrs["gen_ai.operation.name"] = "execute_tool"
        attrs["gen_ai.tool.name"] = tool
        if event.agent is not None:
            attrs["gen_ai.agent.id"] = event.agent
        if event.arguments is not None:
            attrs["gen_ai.tool.call.arguments"] = canonical_json(event.arguments)
        failed = event.kind != "tool.succeeded" or event.outcome not in (None, "ok")
        if failed:
            attrs["error.type"] = event.error_type or (
                "denied" if event.kind == "tool.denied" else "error"
            )
        end = _ns(event)
        start = end - int((event.latency_ms or 0.0) * 1_000_000)
        span = self._tracer.start_span(
            f"execute_tool {tool}",
            context=self._parent(event),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            start_time=start,
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, attrs["error.type"]))
        span.end(end_time=end)

    def _log(self, event: AuditEvent) -> None:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.trace import TraceFlags

        warn = event.outcome in ("denied", "error")
        attrs = _attributes(event)
        attrs["event.name"] = f"agent_identity.{event.kind}"
        record: dict[str, Any] = {
            "timestamp": _ns(event),
            "severity_number": SeverityNumber.WARN if warn else SeverityNumber.INFO,
            "severity_text": "WARN" if warn else "INFO",
            "body": event.kind,
            "attributes": attrs,
        }
        if event.trace_id is not None and event.span_id is not None:
            record["trace_id"] = int(event.trace_id, 16)
            record["span_id"] = int(event.span_id, 16)
            record["trace_flags"] = TraceFlags(TraceFlags.SAMPLED)
        try:
            self._logger.emit(LogRecord(event_name=f"agent_identity.{event.kind}", **record))
        except TypeError:  # opentelemetry-api < 1.35 has no event_name
            self._logger.emit(LogRecord(**record))
