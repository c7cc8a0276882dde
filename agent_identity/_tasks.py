"""Work that must finish even when the task that asked for it is cancelled.

A refresh with a rotating refresh token is the case in point: once the request is sent,
the server has rotated the refresh token, so the response must be stored whatever happens
to the caller, or the next refresh replays the old token and many servers then revoke the
whole grant (RFC 9700 §4.14.2). One impatient tool call (``anyio.move_on_after``, a tool
timeout) must not cost every other caller the grant.

:meth:`Detached.run` runs such a job in a task of its own, spawned on the running event
loop (an asyncio task, or a trio system task), so it needs no task group from the caller:
the caller waits for the result and, when it is cancelled, returns at once while the job
goes on to its end. The job itself bounds its work (every request has the transport's
timeout). :meth:`Detached.drain` waits for the running jobs (the identity client calls it
when it closes). Inside a job, :func:`point_of_no_return` shields the part whose outcome
must be kept also from the cancellation of the job's own task (the event loop shutting
down).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio

from agent_identity.errors import TransportError

__all__ = ["Detached", "point_of_no_return"]

T = TypeVar("T")
logger = logging.getLogger("agent_identity")


class _Outcome(Generic[T]):
    __slots__ = ("abandoned", "done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class Detached:
    """Runs jobs that outlive their callers (see the module docstring)."""

    def __init__(self) -> None:
        self._running = 0
        self._idle: anyio.Event | None = None
        self._refs: set[Any] = set()  # strong references to asyncio tasks

    @property
    def running(self) -> int:
        """How many jobs are running now."""
        return self._running

    async def run(self, job: Callable[[], Awaitable[T]]) -> T:
        """Run ``job`` in a task of its own and return its result (or raise its error).
        If the caller is cancelled, it leaves at once and the job still runs to its end."""
        outcome: _Outcome[T] = _Outcome()

        async def runner() -> None:
            try:
                outcome.value = await job()
            except BaseException as exc:  # delivered to the caller, never to the loop
                outcome.error = exc
                if outcome.abandoned and not isinstance(exc, anyio.get_cancelled_exc_class()):
                    logger.warning(
                        "a job whose caller was cancelled failed: %s", type(exc).__name__
                    )
            finally:
                outcome.done.set()
                self._running -= 1
                if self._running == 0 and self._idle is not None:
                    self._idle.set()

        self._running += 1
        self._spawn(runner)
        try:
            await outcome.done.wait()
        except BaseException:
            outcome.abandoned = True
            logger.debug("the caller left; a detached job goes on until it is done")
            raise
        error = outcome.error
        if error is not None:
            if isinstance(error, anyio.get_cancelled_exc_class()):
                # The job's own task was cancelled (the event loop is shutting down): that
                # is not the caller's cancellation, so it is reported as a typed error.
                raise TransportError("the operation was cancelled before it completed")
            raise error
        return outcome.value  # type: ignore[return-value]

    def _spawn(self, runner: Callable[[], Coroutine[Any, Any, None]]) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: anyio's other backend, trio
            import trio

            trio.lowlevel.spawn_system_task(runner)
            return
        task = loop.create_task(runner())
        self._refs.add(task)
        task.add_done_callback(self._refs.discard)

    async def drain(self, seconds: float) -> None:
        """Wait until no job runs (at most ``seconds``)."""
        with anyio.move_on_after(seconds):
            while self._running:
                self._idle = anyio.Event()
                await self._idle.wait()


@asynccontextmanager
async def point_of_no_return(seconds: float) -> AsyncIterator[None]:
    """Shield the body from cancellation (it is bounded by ``seconds`` instead): for the
    part of a job after which its outcome must be kept."""
    with anyio.CancelScope(shield=True), anyio.fail_after(seconds):
        yield
