"""Clocks. Expiry and polling use a monotonic clock (security item 39); JWT validation
uses wall-clock time. Both are injectable so tests can move time without sleeping."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: ``monotonic()`` for deadlines and expiry, ``time()`` (Unix
    epoch seconds) only where a protocol is defined in wall-clock terms (JWT ``exp``)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The process clocks: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
