"""The audit trail: what the client and the tool guard call to record events.

Normal mode never slows down or fails the caller: :meth:`AuditTrail.emit` puts the record
into a bounded buffer that a background task writes to the sink in batches; when the buffer
is full the record is dropped and counted; a failing or slow sink is counted and logged
(once per error type, without record contents). Strict mode writes before returning and
raises :class:`~agent_identity.errors.AuditError` when the record could not be written, so
the caller can refuse to act without an audit record (security item 40: every tool call
yields exactly one record).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from agent_identity.audit.events import AuditEvent
from agent_identity.audit.sinks import AuditSink
from agent_identity.errors import AuditError, ConfigurationError

__all__ = ["AuditStats", "AuditTrail"]

logger = logging.getLogger("agent_identity.audit.trail")

_IDLE_POLL = 0.1  # seconds: bound on the pickup delay of records from foreign threads
#: Seconds the writer waits after a wake-up before taking a batch, so that records emitted
#: close together (one per tool call) share one sink call instead of one each.
_LINGER = 0.005


@dataclass(frozen=True)
class AuditStats:
    """Counters since the trail was built.

    ``emitted``: records handed to :meth:`~AuditTrail.emit`/``emit_nowait``;
    ``written``: records the sink accepted; ``dropped``: records lost (buffer full, failed
    or timed-out write, still buffered at close); ``failures``: failed or timed-out sink
    calls. ``emitted == written + dropped + pending``.
    """

    emitted: int
    written: int
    dropped: int
    failures: int


class AuditTrail:
    """Buffers audit records and writes them to ``sink``.

    Use as ``async with AuditTrail(sink) as trail:``: entering starts the background
    writer, leaving flushes what is buffered (for at most ``close_timeout`` seconds) and
    closes the sink. A trail that is not running (never entered, or closed) refuses
    records: :meth:`emit` and :meth:`emit_nowait` raise
    :class:`~agent_identity.errors.AuditError` instead of losing them silently.

    - ``buffer_size``: records held at most; beyond, records are dropped and counted;
    - ``strict``: :meth:`emit` writes before returning, within ``write_timeout`` seconds,
      and raises :class:`~agent_identity.errors.AuditError` on failure;
    - ``include_arguments``: keep tool arguments (redacted, bounded) in records; by default
      they are removed and only ``arguments_hash`` stays;
    - ``batch_size``: records per sink call at most in the background writer, which waits
      5 ms for a batch to fill before a sink call (records of calls close together share
      one write; :meth:`flush` and leaving the trail write what is buffered).
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        buffer_size: int = 10_000,
        strict: bool = False,
        include_arguments: bool = False,
        write_timeout: float = 5.0,
        close_timeout: float = 10.0,
        batch_size: int = 256,
    ) -> None:
        if buffer_size < 1 or batch_size < 1:
            raise ConfigurationError("buffer_size and batch_size must be at least 1")
        if write_timeout <= 0 or close_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        self._sink = sink
        self._buffer_size = buffer_size
        self._strict = strict
        self._include_arguments = include_arguments
        self._write_timeout = write_timeout
        self._close_timeout = close_timeout
        self._batch_size = batch_size
        self._queue: deque[AuditEvent] = deque()
        self._mutex = threading.Lock()  # emit_nowait may run in another thread
        self._wakeup: anyio.Event | None = None  # made in __aenter__ (needs a running loop)
        self._loop_thread: int | None = None
        self._tg: TaskGroup | None = None
        self._closing = False
        self._state = "new"  # "running" once entered, "closing", then "closed"
        self._writer_running = False
        self._inflight = 0
        self._emitted = 0
        self._written = 0
        self._dropped = 0
        self._failures = 0
        self._logged: set[str] = set()

    def __repr__(self) -> str:
        return f"AuditTrail(sink={self._sink!r}, strict={self._strict!r})"

    @property
    def strict(self) -> bool:
        return self._strict

    @property
    def include_arguments(self) -> bool:
        return self._include_arguments

    @property
    def running(self) -> bool:
        """Whether records are accepted: entered and not closed yet."""
        return self._state in ("running", "closing")

    def ensure_running(self) -> None:
        """Raise :class:`~agent_identity.errors.AuditError` unless the trail accepts
        records (call it before an action that must be audited)."""
        if self._state in ("running", "closing"):
            return
        how = "was closed" if self._state == "closed" else "was never started"
        raise AuditError(
            f"{type(self).__name__}({type(self._sink).__name__}) {how}: it would lose every "
            "record. Run the code that emits inside `async with AuditTrail(sink) as trail:` "
            "(with a BlockingIdentityClient: "
            "`with identity.portal.wrap_async_context_manager(trail):`)."
        )

    @property
    def stats(self) -> AuditStats:
        with self._mutex:
            return AuditStats(self._emitted, self._written, self._dropped, self._failures)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("AuditTrail is already running")
        self._closing = False
        self._state = "running"
        self._loop_thread = threading.get_ident()
        self._wakeup = anyio.Event()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._writer_running = True  # before the task first runs: flush() must wait for it
        tg.start_soon(self._writer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush the buffer (bounded by ``close_timeout``), stop the writer and close the
        sink. Records that could not be written in time are counted as dropped."""
        tg, self._tg = self._tg, None
        self._closing = True
        if self._state == "running":
            self._state = "closing"  # records still arriving are written or counted
        drain = True
        try:
            if tg is not None:
                self._wake()
                try:
                    with anyio.CancelScope(shield=True):
                        with anyio.move_on_after(self._close_timeout) as scope:
                            await self._wait_idle()
                    if scope.cancelled_caught:
                        drain = False
                        tg.cancel_scope.cancel()
                finally:
                    # the task group's scope is the current one here: exit it outside any
                    # scope opened in this method
                    await tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                if drain:  # what a cancelled writer left, or a trail never entered
                    with anyio.move_on_after(self._close_timeout):
                        await self._drain()
                with self._mutex:
                    self._dropped += len(self._queue) + self._inflight
                    self._queue.clear()
                    self._inflight = 0
                try:
                    with anyio.fail_after(self._close_timeout):
                        await self._sink.aclose()
                except Exception as exc:
                    self._failed("close", exc)
                self._loop_thread = None
                self._state = "closed"

    # -- emitting ------------------------------------------------------------------------

    def _prepare(self, event: AuditEvent) -> AuditEvent:
        if event.arguments is not None and not self._include_arguments:
            return event.model_copy(update={"arguments": None})
        return event

    async def emit(self, event: AuditEvent) -> None:
        """Record ``event``.

        Normal mode: buffer it and return at once; never blocks, never raises for the sink.
        Strict mode: write it now; raise :class:`~agent_identity.errors.AuditError` if the
        sink failed or did not answer within ``write_timeout``. Both raise
        :class:`~agent_identity.errors.AuditError` when the trail is not running.
        """
        self.ensure_running()
        if not self._strict:
            self.emit_nowait(event)
            return
        event = self._prepare(event)
        with self._mutex:
            self._emitted += 1
        problem = await self._write([event])
        if problem is not None:
            raise AuditError(
                f"audit record not written: {type(self._sink).__name__} {problem}"
            ) from None

    def emit_nowait(self, event: AuditEvent) -> bool:
        """Buffer ``event`` without awaiting; usable from synchronous code and from other
        threads. Returns ``False`` if the buffer was full and the record was dropped.
        Raises :class:`~agent_identity.errors.AuditError` only when the trail is not
        running. (Strict mode's guarantee needs ``await emit(...)``.)"""
        self.ensure_running()
        event = self._prepare(event)
        with self._mutex:
            self._emitted += 1
            if len(self._queue) >= self._buffer_size:
                self._dropped += 1
                full = True
            else:
                self._queue.append(event)
                full = False
        if full:
            self._log_once("buffer-full", "audit buffer full: records are dropped and counted")
            return False
        if threading.get_ident() == self._loop_thread:
            self._wake()
        return True

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every buffered record has been handed to the sink (written or
        counted as failed), for at most ``close_timeout`` seconds. Without a running
        writer, write the buffer from this task. A trail never entered raises
        :class:`~agent_identity.errors.AuditError`; a closed one has nothing to flush."""
        if self._state == "new":
            self.ensure_running()
        with anyio.move_on_after(self._close_timeout):
            if self._tg is None:
                await self._drain()
            else:
                self._wake()
                await self._wait_idle()

    # -- writing -------------------------------------------------------------------------

    def _take(self) -> list[AuditEvent]:
        with self._mutex:
            count = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._inflight += count
            return batch

    async def _drain(self) -> None:
        while batch := self._take():
            await self._write(batch, inflight=True)

    async def _wait_idle(self) -> None:
        while self._writer_running:
            with self._mutex:
                idle = not self._queue and not self._inflight
            if idle:
                return
            await anyio.sleep(0.005)

    async def _writer(self) -> None:
        self._writer_running = True
        try:
            while True:
                with self._mutex:
                    pending = len(self._queue)
                if 0 < pending < self._batch_size and not self._closing:
                    await anyio.sleep(_LINGER)  # let the batch fill
                batch = self._take()
                if batch:
                    await self._write(batch, inflight=True)
                    continue
                if self._closing:
                    return
                self._wakeup = anyio.Event()
                with anyio.move_on_after(_IDLE_POLL):
                    await self._wakeup.wait()
        finally:
            self._writer_running = False

    async def _write(self, batch: Sequence[AuditEvent], *, inflight: bool = False) -> str | None:
        """Write one batch; return ``None`` on success, else a short description of the
        failure (exception type only). Cancellation propagates."""
        problem: str | None = None
        try:
            with anyio.fail_after(self._write_timeout):
                await self._sink.write(batch)
        except TimeoutError:
            problem = f"timed out after {self._write_timeout:g}s"
            self._failed("write", None)
        except Exception as exc:
            problem = f"failed ({type(exc).__name__})"
            self._failed("write", exc)
        except BaseException:  # cancelled: the batch is lost, keep the books right
            with self._mutex:
                self._dropped += len(batch)
                if inflight:
                    self._inflight -= len(batch)
            raise
        with self._mutex:
            if problem is None:
                self._written += len(batch)
            else:
                self._dropped += len(batch)
            if inflight:
                self._inflight -= len(batch)
        return problem

    def _failed(self, what: str, exc: BaseException | None) -> None:
        with self._mutex:
            self._failures += 1
        name = type(exc).__name__ if exc is not None else "timeout"
        self._log_once(
            f"{what}:{name}",
            f"audit sink {what} failed ({type(self._sink).__name__}: {name}); "
            "further failures of this kind are counted in stats, not logged",
        )

    def _log_once(self, key: str, message: str) -> None:
        with self._mutex:
            if key in self._logged:
                return
            self._logged.add(key)
        logger.warning("%s", message)
