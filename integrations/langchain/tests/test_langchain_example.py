"""The LangChain example runs end to end against the local authorization server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_identity.devidp import DevIdP

pytestmark = pytest.mark.idp

ROOT = Path(__file__).resolve().parents[3]


def test_langchain_example_runs_end_to_end(ciba_idp: DevIdP, tmp_path: Path) -> None:
    # a fresh machine: no vault configured (the embedded SQLite default), in a temp dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_IDENTITY_")}
    env["XDG_DATA_HOME"] = str(tmp_path)
    result = subprocess.run(  # noqa: S603 - our own example, our interpreter
        [sys.executable, "examples/langchain_agent.py", "--issuer", ciba_idp.issuer],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "list_events['day'] create_event['day', 'title']" in out
    assert "[bob] list_events -> error: The user declined to authorize 'list_events'" in out
    assert (
        "[alice] list_events -> success: events of monday for alice (token scope='calendar.read')"
    ) in out
    assert "alice's phone shows 'create_event tuesday standup" in out
    assert (
        "[alice] create_event -> success: created 'standup' on tuesday for alice "
        "(token scope='calendar.write')"
    ) in out
    assert "model: You have not shared your calendar with me." in out
    assert "3 audit records, one per tool call" in out
    assert "create_event/alice/ok list_events/alice/ok list_events/bob/denied" in out
    assert "events of friday for alice (token scope='calendar.read')" in out
    assert out.rstrip().endswith("Done.")
