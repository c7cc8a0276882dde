"""Where audit records go: the :class:`AuditSink` protocol and its built-in sinks.

- :class:`LoggingSink`: one :mod:`logging` record per audit record (silent unless the
  application configures the ``agent_identity.audit`` logger), with :class:`JsonFormatter`;
- :class:`JsonlSink`: an append-only, hash-chained JSONL file with optional rotation
  (format and guarantees in :mod:`agent_identity.audit.chain`);
- :class:`FanoutSink`: several sinks at once;
- :class:`MemorySink`: a list, for tests;
- :class:`~agent_identity.audit.otel.OpenTelemetrySink` (extra ``[otel]``).

A sink receives records already scrubbed (:mod:`agent_identity.audit.redaction` runs when a
record is built). Sinks are called by one :class:`~agent_identity.audit.AuditTrail`; they
may be slow or fail, the trail bounds and counts that.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from agent_identity.audit.chain import GENESIS, chain_files, make_record, rotation_index
from agent_identity.audit.events import AuditEvent, canonical_json
from agent_identity.audit.redaction import install_redacting_filter
from agent_identity.errors import AuditError, ConfigurationError

__all__ = [
    "AuditSink",
    "FanoutSink",
    "JsonFormatter",
    "JsonlSink",
    "LoggingSink",
    "MemorySink",
]


@runtime_checkable
class AuditSink(Protocol):
    """Receives batches of audit records, in emission order.

    ``write`` returns once the records are stored (as far as the sink can tell) and raises
    on failure; ``aclose`` releases resources. Neither is called concurrently with itself by
    the trail in normal mode; strict-mode writes may overlap, so a sink that needs ordering
    serialises internally (as :class:`JsonlSink` does).
    """

    async def write(self, events: Sequence[AuditEvent]) -> None: ...

    async def aclose(self) -> None: ...


class MemorySink:
    """Keeps records in :attr:`events` (for tests)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"MemorySink(events={len(self.events)})"

    async def write(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)

    async def aclose(self) -> None:
        self.closed = True


class JsonFormatter(logging.Formatter):
    """Formats a log record as one JSON object per line: ``time`` (UTC, ISO 8601),
    ``level``, ``logger``, ``message``, ``audit`` (the audit record, for records from
    :class:`LoggingSink`) and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        audit = getattr(record, "audit_event", None)
        if isinstance(audit, dict):
            out["audit"] = audit
            out["message"] = f"audit {audit.get('kind')}"  # not the record a second time
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return canonical_json(_plain(out))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    return str(value)


class LoggingSink:
    """One :mod:`logging` record per audit record on ``logger_name``.

    With ``json=True`` the message is the record's canonical JSON; otherwise a short
    ``key=value`` summary. Either way the record is attached as the ``audit_event``
    attribute (a dict) for structured formatters such as :class:`JsonFormatter`. Building
    the sink installs :class:`~agent_identity.audit.redaction.RedactingFilter` on that
    logger, on the SDK logger ``agent_identity`` and on their current handlers.
    """

    def __init__(
        self,
        logger_name: str = "agent_identity.audit",
        level: int = logging.INFO,
        json: bool = True,
    ) -> None:
        self._logger = logging.getLogger(logger_name)
        self._level = level
        self._json = json
        install_redacting_filter(self._logger)
        install_redacting_filter("agent_identity")

    def __repr__(self) -> str:
        return f"LoggingSink(logger_name={self._logger.name!r})"

    async def write(self, events: Sequence[AuditEvent]) -> None:
        if not self._logger.isEnabledFor(self._level):
            return
        for event in events:
            data = event.to_json_dict()
            if self._json:
                message = canonical_json(data)
            else:
                parts = [f"audit {event.kind}"]
                for name in ("tool", "outcome", "tenant", "user", "agent", "resource"):
                    value = data.get(name)
                    if value is not None:
                        parts.append(f"{name}={value}")
                parts.append(f"event_id={event.event_id}")
                message = " ".join(parts)
            self._logger.log(self._level, "%s", message, extra={"audit_event": data})

    async def aclose(self) -> None:
        """Nothing to release: handlers belong to the application."""


class FanoutSink:
    """Writes every batch to all ``sinks`` concurrently. If any fails, the others still
    get the batch and an :class:`~agent_identity.errors.AuditError` naming the failed
    sinks and error types (never their messages) is raised afterwards."""

    def __init__(self, *sinks: AuditSink) -> None:
        if not sinks:
            raise ConfigurationError("FanoutSink needs at least one sink")
        self._sinks = sinks

    def __repr__(self) -> str:
        return f"FanoutSink({', '.join(repr(s) for s in self._sinks)})"

    async def _all(self, call: str, events: Sequence[AuditEvent] | None) -> None:
        failed: list[str] = []

        async def one(sink: AuditSink) -> None:
            try:
                if events is None:
                    await sink.aclose()
                else:
                    await sink.write(events)
            except Exception as exc:  # collected and reported below
                failed.append(f"{type(sink).__name__}: {type(exc).__name__}")

        async with anyio.create_task_group() as tg:
            for sink in self._sinks:
                tg.start_soon(one, sink)
        if failed:
            raise AuditError(f"audit sink {call} failed ({'; '.join(failed)})")

    async def write(self, events: Sequence[AuditEvent]) -> None:
        await self._all("write", events)

    async def aclose(self) -> None:
        await self._all("close", None)


try:  # POSIX advisory locking keeps two writers off one chain
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


class JsonlSink:
    """Append-only JSONL audit file with a SHA-256 hash chain (see
    :mod:`agent_identity.audit.chain`).

    - ``rotate_bytes``: before a record would grow the file past this size, the file is
      renamed to ``<path>.<n>`` (next free number; ``.1`` is the oldest) and a new one is
      started whose first record links to the last record of the previous file;
    - ``fsync``: flush each batch to stable storage before ``write`` returns (default);
    - files are created with mode 0600; the chain resumes after a restart from the last
      record on disk (a torn last line is left in place, ended, and reported by
      verification);
    - one writer per chain: ``<path>.lock`` is held with an exclusive ``flock`` while the
      sink is open; a second writer gets :class:`~agent_identity.errors.AuditError`.

    File work runs in a worker thread; writes are serialised by a lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        fsync: bool = True,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ConfigurationError("rotate_bytes must be positive")
        self._path = Path(path)
        if rotation_index(self._path) is not None:
            raise ConfigurationError("the audit file name must not end in .<number>")
        self._rotate_bytes = rotate_bytes
        self._fsync = fsync
        self._lock = anyio.Lock()
        self._fh: Any = None
        self._lock_fd: int | None = None
        self._size = 0
        self._seq = 0
        self._prev = GENESIS

    def __repr__(self) -> str:
        return f"JsonlSink(path={str(self._path)!r}, rotate_bytes={self._rotate_bytes!r})"

    @property
    def path(self) -> Path:
        """The live file (rotated files sit next to it)."""
        return self._path

    async def write(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        lines = [event.to_json_dict() for event in events]
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_sync, lines)

    async def aclose(self) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._close_sync)

    # -- worker-thread side ----------------------------------------------------------------

    def _write_sync(self, events: list[dict[str, Any]]) -> None:
        if self._fh is None:
            self._open_sync()
        try:
            pending: list[bytes] = []
            pending_size = 0
            for event in events:
                line, digest = make_record(event, seq=self._seq, prev_hash=self._prev)
                total = self._size + pending_size + len(line)
                if (
                    self._rotate_bytes is not None
                    and self._size + pending_size > 0
                    and (total > self._rotate_bytes)
                ):
                    self._append(pending)
                    pending, pending_size = [], 0
                    self._rotate_sync()
                pending.append(line)
                pending_size += len(line)
                self._seq += 1
                self._prev = digest
            self._append(pending)
        except BaseException:
            # The file may hold part of the batch: forget our view and resync from disk.
            self._close_file()
            raise

    def _append(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"".join(lines)
        self._fh.write(data)
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        self._size += len(data)

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None and _fcntl is not None:
            fd = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise AuditError("another writer holds this audit file") from None
            self._lock_fd = fd
        self._seq, self._prev = _resume(chain_files(self._path))
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size
        if self._size and not _ends_with_newline(self._path):
            self._append([b"\n"])  # end a torn line so the next record starts clean

    def _rotate_sync(self) -> None:
        self._close_file()
        existing = [rotation_index(p) for p in chain_files(self._path)]
        target = Path(f"{self._path}.{max((i or 0) for i in existing) + 1}")
        os.rename(self._path, target)
        _fsync_dir(self._path.parent)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._fh = os.fdopen(fd, "ab")
        self._size = 0

    def _close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def _close_sync(self) -> None:
        self._close_file()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TAIL = 1 << 20


def _resume(files: list[Path]) -> tuple[int, str]:
    """``(next seq, last hash)`` from the newest readable record on disk."""
    import json

    for path in reversed(files):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        with path.open("rb") as fh:
            fh.seek(max(0, size - _TAIL))
            data = fh.read()
            if size > _TAIL:
                data = data.split(b"\n", 1)[-1]
        for raw in reversed(data.split(b"\n")):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):
                continue  # a torn or garbage line: verification reports it
            if isinstance(record, dict):
                seq, digest = record.get("seq"), record.get("hash")
                if isinstance(seq, int) and isinstance(digest, str):
                    return seq + 1, digest
    return 0, GENESIS
