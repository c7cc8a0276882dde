"""The active OpenTelemetry span, read without importing OpenTelemetry."""

from __future__ import annotations

import sys

__all__ = ["current_span_ids"]


def current_span_ids() -> tuple[str | None, str | None]:
    """``(trace_id, span_id)`` of the active OpenTelemetry span as lowercase hex, or
    ``(None, None)``. Never imports OpenTelemetry: if the application has not imported it,
    there can be no active span."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None, None
    try:
        ctx = trace.get_current_span().get_span_context()
    except Exception:  # a broken provider must not break auditing
        return None, None
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
