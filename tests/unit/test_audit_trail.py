"""AuditTrail: never blocks or fails the caller in normal mode; strict mode refuses."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from agent_identity.audit import (
    AuditError,
    AuditEvent,
    AuditTrail,
    FanoutSink,
    MemorySink,
)
from agent_identity.errors import AgentIdentityError

pytestmark = pytest.mark.anyio


class SlowSink(MemorySink):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0

    async def write(self, events: Sequence[AuditEvent]) -> None:
        self.calls += 1
        await anyio.sleep(self.delay)
        await super().write(events)


class FailingSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def write(self, events: Sequence[AuditEvent]) -> None:
        self.calls += 1
        raise OSError(28, "No space left on device: Bearer CANARY-IN-SINK-ERROR")


def _event(i: int = 0) -> AuditEvent:
    return AuditEvent(kind="tool.succeeded", tool=f"t{i}", outcome="ok")


async def test_slow_sink_never_blocks_emit_and_full_buffer_drops() -> None:
    sink = SlowSink(delay=30)
    trail = AuditTrail(sink, buffer_size=100, batch_size=10, close_timeout=0.2)
    async with trail:
        with anyio.fail_after(5):  # a bound, not a benchmark: the sink would need 30 s each
            for i in range(1000):
                await trail.emit(_event(i))
        stats = trail.stats
        assert stats.emitted == 1000
        # one batch is stuck in the sink, the buffer holds 100, the rest was dropped
        assert stats.dropped >= 1000 - 100 - 10
        assert stats.written == 0
    final = trail.stats
    assert final.emitted == final.written + final.dropped == 1000
    assert sink.closed


async def test_full_buffer_drops_and_counts() -> None:
    sink = MemorySink()
    async with AuditTrail(sink, buffer_size=10) as trail:
        # no await between the calls: the writer cannot empty the buffer meanwhile
        accepted = [trail.emit_nowait(_event(i)) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert trail.stats.dropped == 5
    assert [e.tool for e in sink.events] == [f"t{i}" for i in range(10)]
    assert trail.stats.written == 10


async def test_a_trail_never_entered_refuses_records() -> None:
    """It would lose them: the writer never runs and nothing closes the sink."""
    sink = MemorySink()
    for trail in (AuditTrail(sink), AuditTrail(sink, strict=True)):
        assert not trail.running
        with pytest.raises(AuditError, match="never started") as info:
            await trail.emit(_event())
        assert isinstance(info.value, AgentIdentityError)
        assert "async with AuditTrail(sink) as trail" in str(info.value)
        with pytest.raises(AuditError, match="never started"):
            trail.emit_nowait(_event())
        with pytest.raises(AuditError, match="never started"):
            await anyio.to_thread.run_sync(trail.emit_nowait, _event())
        with pytest.raises(AuditError, match="never started"):
            await trail.flush()
        with pytest.raises(AuditError, match="never started"):
            trail.ensure_running()
        assert trail.stats.emitted == 0
    assert sink.events == []


async def test_a_closed_trail_refuses_records() -> None:
    sink = MemorySink()
    async with AuditTrail(sink) as trail:
        assert trail.running
        await trail.emit(_event(1))
    assert not trail.running
    with pytest.raises(AuditError, match="was closed"):
        await trail.emit(_event(2))
    with pytest.raises(AuditError, match="was closed"):
        trail.emit_nowait(_event(3))
    await trail.flush()  # nothing to flush: not an error
    assert [e.tool for e in sink.events] == ["t1"]
    assert trail.stats.emitted == trail.stats.written == 1


async def test_failing_sink_never_raises_into_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_identity.audit")
    sink = FailingSink()
    async with AuditTrail(sink, batch_size=1) as trail:
        for i in range(5):
            await trail.emit(_event(i))
            trail.emit_nowait(_event(i))
        await trail.flush()
    stats = trail.stats
    assert stats.emitted == 10
    assert stats.written == 0
    assert stats.dropped == 10
    assert stats.failures == sink.calls == 10
    warnings = [r for r in caplog.records if r.name.startswith("agent_identity.audit")]
    assert len(warnings) == 1  # once per kind of failure
    assert "OSError" in warnings[0].getMessage()
    assert "CANARY" not in caplog.text
    assert "No space" not in caplog.text


async def test_strict_mode_raises_when_the_sink_fails() -> None:
    async with AuditTrail(FailingSink(), strict=True) as trail:
        with pytest.raises(AuditError) as info:
            await trail.emit(_event())
    assert isinstance(info.value, AgentIdentityError)
    assert "OSError" in str(info.value)
    assert "CANARY" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert trail.stats.failures == 1
    assert trail.stats.dropped == 1


async def test_strict_mode_raises_when_the_sink_hangs() -> None:
    trail = AuditTrail(SlowSink(delay=30), strict=True, write_timeout=0.05)
    async with trail:
        with anyio.fail_after(5), pytest.raises(AuditError, match="timed out"):
            await trail.emit(_event())


async def test_strict_mode_writes_before_returning() -> None:
    sink = MemorySink()
    async with AuditTrail(sink, strict=True) as trail:
        await trail.emit(_event(1))
        assert [e.tool for e in sink.events] == ["t1"]  # written, not just buffered
    assert trail.stats.written == 1
    assert trail.stats.dropped == 0


async def test_strict_fanout_fails_if_any_sink_fails() -> None:
    good = MemorySink()
    async with AuditTrail(FanoutSink(good, FailingSink()), strict=True) as trail:
        with pytest.raises(AuditError):
            await trail.emit(_event())
    assert len(good.events) == 1  # the healthy sink still got it


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_flush_on_close(anyio_backend: str) -> None:
    sink = SlowSink(delay=0.001)
    async with AuditTrail(sink, batch_size=7) as trail:
        for i in range(100):
            await trail.emit(_event(i))
    assert [e.tool for e in sink.events] == [f"t{i}" for i in range(100)]  # in order
    assert trail.stats.written == 100
    assert sink.closed


async def test_records_emitted_close_together_share_a_sink_call() -> None:
    """One record per tool call, the writer running between calls: the records still
    reach the sink in a few batches (a sink call per record would cost every tool call a
    thread hop and an fsync), in order, and all of them by flush()."""
    sink = SlowSink(delay=0)
    async with AuditTrail(sink) as trail:
        for i in range(20):
            await trail.emit(_event(i))
            await anyio.lowlevel.checkpoint()  # the writer may run here (between tool calls)
        await trail.flush()
        assert [e.tool for e in sink.events] == [f"t{i}" for i in range(20)]
        assert sink.calls <= 4, sink.calls


async def test_emit_nowait_from_another_thread() -> None:
    sink = MemorySink()
    async with AuditTrail(sink) as trail:
        for i in range(3):
            assert await anyio.to_thread.run_sync(trail.emit_nowait, _event(i))
        await trail.flush()
        assert len(sink.events) == 3
    assert trail.stats.written == 3


async def test_close_is_bounded_when_the_sink_hangs() -> None:
    sink = SlowSink(delay=30)
    trail = AuditTrail(sink, close_timeout=0.1)
    with anyio.fail_after(5):
        async with trail:
            await trail.emit(_event())
            await anyio.sleep(0.01)
    assert trail.stats.dropped == 1
    assert trail.stats.written == 0


async def test_cancellation_is_not_swallowed() -> None:
    trail = AuditTrail(SlowSink(delay=30), strict=True, write_timeout=10)
    async with trail:
        with anyio.move_on_after(0.05) as scope:
            await trail.emit(_event())
    assert scope.cancelled_caught
    assert trail.stats.dropped == 1
    assert trail.stats.failures == 0


async def test_tool_guard_refuses_to_act_without_a_running_trail() -> None:
    """The refusal comes before any token request and before the tool runs, not in the
    audit step after the action happened."""
    from typing import Any, cast

    from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement

    ran: list[str] = []

    class Identity:
        client_id = "agent"
        issuer = "https://as.example"

        def user(self, *args: Any, **kwargs: Any) -> Any:
            ran.append("user")
            return object()

    async def tool() -> str:
        ran.append("tool")
        return "done"

    guard = ToolGuard(cast(Any, Identity()), audit=AuditTrail(MemorySink()))
    call = ToolCall("send_mail", {"to": "bob"}, user="alice", tenant="acme")
    with pytest.raises(AuditError, match="never started"):
        await guard.run(call, ToolRequirement(), tool)
    assert ran == []  # neither the user's grants nor the tool were touched
