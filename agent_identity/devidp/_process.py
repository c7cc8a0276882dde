"""A local server as a child process (DEV ONLY): the part the dev authorization server and
the test suite's second authorization server (``tests/_dot.py``) share.

The child gets its configuration as ``config.json`` in a fresh work directory (mode
``0600``), writes its diagnostics to ``server.log`` there, prints one JSON line
``{"ready": true, ...}`` on stdout when it serves, and exits when its stdin closes, so a
parent that dies without calling :meth:`ServerProcess.stop` (even SIGKILL) never leaves it
behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

__all__ = ["ServerProcess"]


class ServerProcess:
    """One child server process; ``name`` labels errors and the stdout thread, ``error``
    is the exception type raised when it does not become ready."""

    def __init__(self, name: str, error: type[Exception]) -> None:
        self._name = name
        self._error = error
        self._process: subprocess.Popen[str] | None = None
        self._workdir: Path | None = None
        self._log: IO[str] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def started(self) -> bool:
        return self._process is not None

    def start(
        self,
        argv: Callable[[Path], Sequence[str]],
        *,
        config: Mapping[str, Any],
        env: Mapping[str, str],
        cwd: Path | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Write ``config`` to a fresh work directory, spawn ``argv(config_path)`` (in
        ``cwd``, default the work directory) and return its ready line. If it exits or
        stays silent for ``timeout`` seconds, it is stopped and ``error`` is raised with
        the end of its log."""
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix=f"{self._name}-"))
        try:
            config_path = workdir / "config.json"
            config_path.touch(0o600)  # never readable by others, not even for a moment
            config_path.write_text(json.dumps(config))
            self._log = (workdir / "server.log").open("w+", encoding="utf-8")
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                list(argv(config_path)),
                cwd=cwd or workdir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
                env=dict(env),
            )
        except BaseException:
            self.stop()  # no work directory or log file left behind
            raise
        atexit.register(self.stop)
        return self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._process.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name=f"{self._name}-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:  # also for a server that keeps printing other lines
                    raise queue.Empty
                line = lines.get(timeout=remaining)
            except queue.Empty:
                self._fail(f"{self._name} did not become ready in {timeout:.0f}s")
            if line is None:
                self._fail(f"{self._name} exited before it was ready")
            with contextlib.suppress(ValueError):
                ready = json.loads(line)
                if isinstance(ready, dict) and ready.get("ready") is True:
                    return ready

    def _fail(self, message: str) -> NoReturn:
        log = self.log_text()
        self.stop()
        raise self._error(f"{message}:\n{log[-3000:]}") from None

    def stop(self) -> None:
        """Terminate the server (then kill it if it does not exit) and remove its work
        directory. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            for stream in (process.stdout, process.stdin):
                if stream is not None:
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_text(self) -> str:
        """The server's stderr so far (diagnostics; no tokens or secrets are logged)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read()
        self._log.seek(0, 2)
        return text
