"""Audit trail: one structured, secret-free record per tool call step and token event,
written to logging, a hash-chained JSONL file or OpenTelemetry (security item 40).

::

    from agent_identity.audit import AuditEvent, AuditTrail, JsonlSink

    async with AuditTrail(JsonlSink("audit.jsonl")) as trail:
        await trail.emit(AuditEvent.for_tool_call("tool.succeeded", tool="send_mail",
                                                  arguments=args, outcome="ok"))

Verify a file (and its rotated predecessors) with ``agent-identity audit verify FILE``.
Importing this package never imports OpenTelemetry; :class:`OpenTelemetrySink` needs the
``[otel]`` extra.
"""

from agent_identity.audit.chain import GENESIS, VerifyResult, chain_files, verify_chain
from agent_identity.audit.events import (
    AuditEvent,
    AuditKind,
    ExtraValue,
    Outcome,
    arguments_hash,
    canonical_json,
    fingerprint,
)
from agent_identity.audit.otel import OpenTelemetrySink
from agent_identity.audit.redaction import (
    REDACTED,
    RedactingFilter,
    install_redacting_filter,
    redact,
    redact_text,
)
from agent_identity.audit.sinks import (
    AuditSink,
    FanoutSink,
    JsonFormatter,
    JsonlSink,
    LoggingSink,
    MemorySink,
)
from agent_identity.audit.trail import AuditStats, AuditTrail
from agent_identity.errors import AuditError

__all__ = [
    "GENESIS",
    "REDACTED",
    "AuditError",
    "AuditEvent",
    "AuditKind",
    "AuditSink",
    "AuditStats",
    "AuditTrail",
    "ExtraValue",
    "FanoutSink",
    "JsonFormatter",
    "JsonlSink",
    "LoggingSink",
    "MemorySink",
    "OpenTelemetrySink",
    "Outcome",
    "RedactingFilter",
    "VerifyResult",
    "arguments_hash",
    "canonical_json",
    "chain_files",
    "fingerprint",
    "install_redacting_filter",
    "redact",
    "redact_text",
    "verify_chain",
]
