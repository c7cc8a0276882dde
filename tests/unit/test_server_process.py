"""ServerProcess: the child-process part of the dev servers (agent_identity.devidp and the
test suite's django-oauth-toolkit server)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from agent_identity.devidp._process import ServerProcess


class Boom(RuntimeError):
    pass


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_ready_line_is_returned_and_stop_cleans_up() -> None:
    server = ServerProcess("fake-server", Boom)
    code = (
        "import json, sys; cfg = json.load(open(sys.argv[1])); "
        "print('starting', flush=True); sys.stderr.write('log line\\n'); sys.stderr.flush(); "
        "print(json.dumps({'ready': True, 'port': cfg['port']}), flush=True); sys.stdin.read()"
    )
    seen: list[Path] = []

    def argv(config: Path) -> list[str]:
        seen.append(config)
        return [*_python(code), str(config)]

    ready = server.start(argv, config={"port": 1234}, env=dict(os.environ), timeout=30)
    try:
        assert ready == {"ready": True, "port": 1234}
        assert server.running
        assert server.started
        config = seen[0]
        assert json.loads(config.read_text()) == {"port": 1234}
        assert config.stat().st_mode & 0o777 == 0o600  # it may hold client secrets
    finally:
        server.stop()
    assert not server.running
    assert not server.started
    assert not config.parent.exists()  # the work directory is gone
    server.stop()  # idempotent


def test_a_server_that_exits_before_it_is_ready_raises_with_its_log() -> None:
    server = ServerProcess("fake-server", Boom)
    code = "import sys; sys.stderr.write('no port for you\\n'); sys.exit(3)"
    with pytest.raises(Boom, match=r"(?s)fake-server exited before it was ready.*no port"):
        server.start(lambda _: _python(code), config={}, env=dict(os.environ))
    assert not server.started


def test_a_silent_server_is_stopped_after_the_timeout() -> None:
    server = ServerProcess("fake-server", Boom)
    code = "import sys, time; print('not json', flush=True); time.sleep(60)"
    with pytest.raises(Boom, match="did not become ready in 1s"):
        server.start(lambda _: _python(code), config={}, env=dict(os.environ), timeout=1)
    assert not server.started


def test_a_server_that_keeps_talking_but_never_is_ready_is_stopped_after_the_timeout() -> None:
    server = ServerProcess("fake-server", Boom)
    code = "import time\nwhile True:\n    print('still starting', flush=True)\n    time.sleep(0.01)"
    with pytest.raises(Boom, match="did not become ready in 1s"):
        server.start(lambda _: _python(code), config={}, env=dict(os.environ), timeout=1)
    assert not server.started


def test_a_server_that_cannot_be_spawned_leaves_nothing_behind(tmp_path: Path) -> None:
    server = ServerProcess("fake-server", Boom)
    seen: list[Path] = []

    def argv(config: Path) -> list[str]:
        seen.append(config)
        return [str(tmp_path / "no-such-program")]

    with pytest.raises(FileNotFoundError):
        server.start(argv, config={}, env=dict(os.environ))
    assert not seen[0].parent.exists()
    assert not server.started
