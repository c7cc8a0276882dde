"""Jobs that outlive their callers (agent_identity._tasks), on asyncio and trio."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from agent_identity._tasks import Detached, point_of_no_return
from agent_identity.errors import TransportError

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_cancelled_caller_leaves_at_once_and_the_job_finishes() -> None:
    detached = Detached()
    release = anyio.Event()
    finished: list[str] = []

    async def job() -> str:
        await release.wait()
        finished.append("stored")
        return "token"

    with anyio.fail_after(2), anyio.move_on_after(0.05) as scope:
        await detached.run(job)
    assert scope.cancelled_caught
    assert detached.running == 1
    release.set()
    await detached.drain(2)
    assert finished == ["stored"]
    assert detached.running == 0


async def test_the_result_and_errors_reach_a_patient_caller() -> None:
    detached = Detached()

    async def ok() -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    async def fails() -> int:
        raise ValueError("boom")

    assert await detached.run(ok) == 7
    with pytest.raises(ValueError, match="boom"):
        await detached.run(fails)


async def test_a_job_cancelled_on_its_own_becomes_a_typed_error(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        pytest.skip("trio.Cancelled cannot be raised by hand; asyncio shows the mapping")
    detached = Detached()

    async def cancelled() -> int:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep(1)
        raise anyio.get_cancelled_exc_class()()

    with pytest.raises(TransportError, match="cancelled"):
        await detached.run(cancelled)


async def test_point_of_no_return_shields_and_bounds() -> None:
    done: list[bool] = []
    with anyio.move_on_after(0.01):
        async with point_of_no_return(1.0):
            await anyio.sleep(0.05)
            done.append(True)
    assert done == [True]
    with pytest.raises(TimeoutError):
        async with point_of_no_return(0.01):
            await anyio.sleep(1)
