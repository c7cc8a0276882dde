"""The ``agent-identity`` command line, run as users run it (the installed console script).

- ``agent-identity dev-idp`` with every option of docs/dev-idp.md, on port 0: it answers
  its discovery document, uses the options, and stops cleanly on Ctrl-C (SIGINT);
- its first run shows the npm install (a one-line explanation, then npm's own output);
- bad options are refused before anything starts; other commands refuse stray options;
- ``--help`` of every command is plain text (no reStructuredText markup).
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import httpx2
import pytest
from _helpers import CALENDAR, PAYMENTS, make_client

from agent_identity import Action, IdentityClient, TokenVault
from agent_identity.approval import PingReceiver
from agent_identity.cli import main
from agent_identity.devidp import DevIdP, DevIdPError, ensure_installed

SCRIPT = Path(sys.executable).parent / "agent-identity"


class Server:
    """A running ``agent-identity dev-idp`` process and what it printed."""

    def __init__(self, process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        self.process = process
        self.lines = lines
        self.stdout: list[str] = []
        self.issuer = ""

    def wait_for_issuer(self, timeout: float = 120) -> str:
        """Read the banner up to its last line; return the issuer it printed."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"the banner did not end within {timeout} s: {self.stdout}")
            if line is None:
                pytest.fail(f"dev-idp exited: {self.stdout} {self.stderr()}")
            self.stdout.append(line)
            if line.startswith("issuer:"):
                self.issuer = line.split(":", 1)[1].strip()
            if line == "Ctrl-C to stop.":
                assert self.issuer
                return self.issuer

    def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()

    def interrupt(self) -> int:
        """Ctrl-C, as in a terminal; returns the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


@contextmanager
def dev_idp_cli(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    assert SCRIPT.exists(), f"the console script is not installed: {SCRIPT}"
    process = subprocess.Popen(
        [str(SCRIPT), "dev-idp", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    assert process.stdout is not None
    threading.Thread(target=pump, args=(process.stdout,), daemon=True).start()
    server = Server(process, lines)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _port_closed(issuer: str) -> bool:
    port = int(issuer.rsplit(":", 1)[1])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


# -- dev-idp ----------------------------------------------------------------------------------


@pytest.mark.idp
@pytest.mark.anyio
async def test_dev_idp_cli_port_0_with_every_option(tmp_path: Path) -> None:
    ensure_installed()  # not timed by the startup wait below
    jwk = DevIdP().jwt_client_private_jwk  # a fresh ES256 key (nothing is started)
    jwk_file = tmp_path / "agent-jwt.jwk.json"
    jwk_file.write_text(json.dumps(jwk))
    receiver = PingReceiver()
    async with receiver.serve() as ping_url:
        with dev_idp_cli(
            "--port", "0",
            "--access-token-ttl", "77",
            "--ping-endpoint", ping_url,
            "--jwt-client-jwk", str(jwk_file),
        ) as server:  # fmt: skip
            issuer = await anyio.to_thread.run_sync(server.wait_for_issuer)
            assert issuer.startswith("http://127.0.0.1:")
            assert not issuer.endswith(":9000")  # --port 0: a free port, not the default

            # it answers its discovery document
            async with httpx2.AsyncClient(trust_env=False) as http:
                response = await http.get(f"{issuer}/.well-known/openid-configuration")
            assert response.status_code == 200
            assert response.json()["issuer"] == issuer

            # --jwt-client-jwk: agent-jwt authenticates with that key; --access-token-ttl
            async with IdentityClient(
                issuer,
                client_id="agent-jwt",
                private_key=jwk,
                allow_insecure_loopback=True,
                vault=TokenVault.memory(),
            ) as identity:
                token = await identity.client_credentials(
                    scopes=["calendar.read"], resource=CALENDAR
                )
            assert token.expires_at is not None
            assert round(token.expires_at - token.received_at) == 77

            # --ping-endpoint: agent-ping's CIBA notification reaches our receiver
            idp = DevIdP.connect(issuer)
            pay = Action("pay_invoice", {"invoice": "INV-7"})
            async with make_client(idp, "agent-ping") as identity:
                result: dict[str, Any] = {}

                async def approve() -> None:
                    result["approval"] = await identity.user("alice").approve(
                        action=pay, scopes=["payments.write"], resource=PAYMENTS, ping=receiver
                    )

                async with anyio.create_task_group() as tg:
                    tg.start_soon(approve)
                    with anyio.fail_after(10):
                        while not (pending := await idp.ciba_pending()):  # noqa: ASYNC110
                            await anyio.sleep(0.02)
                    await idp.ciba_approve(pending[0]["auth_req_id"])
            assert result["approval"].use(pay).resource == PAYMENTS
            assert receiver.accepted == 1

            # Ctrl-C stops it cleanly, and the server with it
            code = await anyio.to_thread.run_sync(server.interrupt)
            assert code == 0, server.stderr()
            assert _port_closed(issuer)
            assert "DEVELOPMENT ONLY" in server.stdout[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--port", "http"], "invalid int value"),
        (["--access-token-ttl", "0"], "--access-token-ttl must be at least 1"),
        (["--ping-endpoint", "http://ping.example/notify"], "--ping-endpoint"),
        (["--jwt-client-jwk", "/nonexistent/key.json"], "--jwt-client-jwk: cannot read"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_dev_idp_refuses_bad_options_before_starting(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dev-idp", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: agent-identity dev-idp" in err


def test_dev_idp_refuses_a_public_jwk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public = {k: v for k, v in DevIdP().jwt_client_private_jwk.items() if k != "d"}
    path = tmp_path / "public.json"
    path.write_text(json.dumps(public))
    with pytest.raises(SystemExit):
        main(["dev-idp", "--jwt-client-jwk", str(path)])
    assert "must hold a private JWK" in capsys.readouterr().err


def test_other_commands_refuse_stray_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["version", "--port", "0"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --port 0" in capsys.readouterr().err


# -- the first run: npm install progress ------------------------------------------------------

FAKE_NPM = """#!/bin/sh
# a stand-in for npm: says what it does, then lays out node_modules
echo "npm warn fake-npm: fetching 190 packages" >&2
{install}
echo "added 190 packages in 1s"
exit {code}
"""


def _fake_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, install: str = "", code: int = 0
) -> dict[str, str]:
    """Put a fake ``npm`` first on PATH and an empty dev server cache in place."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    if not install:
        install = (
            "mkdir -p node_modules/oidc-provider && echo '{}' > node_modules/oidc-provider/"
            "package.json"
        )
    npm.write_text(FAKE_NPM.format(install=install, code=code))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AGENT_IDENTITY_DEVIDP_HOME", str(tmp_path / "cache"))
    return dict(os.environ)


def _check_progress(text: str) -> None:
    lines = text.splitlines()
    assert lines[0].startswith("agent-identity: installing the dev authorization server's npm")
    assert "first run only" in lines[0]
    assert "npm warn fake-npm: fetching 190 packages" in lines[1:]
    assert "added 190 packages in 1s" in lines[1:]
    assert lines[-1].startswith("agent-identity: installed in")


def test_install_progress_to_a_terminal_like_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream with a file descriptor (a terminal): npm writes to it directly."""
    _fake_npm(tmp_path, monkeypatch)
    log = tmp_path / "stderr.txt"
    with log.open("w") as stream:
        target = ensure_installed(progress=stream)
    _check_progress(log.read_text())
    assert (target / "node_modules" / "oidc-provider" / "package.json").exists()
    with log.open("w") as stream:  # installed: nothing runs, nothing is shown
        ensure_installed(progress=stream)
    assert log.read_text() == ""


def test_install_progress_to_a_python_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_npm(tmp_path, monkeypatch)
    stream = io.StringIO()
    ensure_installed(progress=stream)
    _check_progress(stream.getvalue())


def test_install_is_quiet_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _fake_npm(tmp_path, monkeypatch)
    ensure_installed()
    assert capfd.readouterr() == ("", "")


def test_failed_install_says_where_npm_output_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_npm(tmp_path, monkeypatch, install="true", code=3)
    stream = io.StringIO()
    with pytest.raises(DevIdPError, match=r"npm ci failed \(exit 3\).*output is above"):
        ensure_installed(progress=stream)
    assert "npm warn fake-npm" in stream.getvalue()
    with pytest.raises(DevIdPError, match="npm warn fake-npm"):  # quiet: the output is kept
        ensure_installed()


@pytest.mark.idp
def test_first_run_of_the_cli_shows_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agent-identity dev-idp`` on a machine without the dev server installed: stderr
    explains the wait and shows npm's output, then the server starts (the fake npm links
    the real packages, so no network is needed)."""
    real = ensure_installed() / "node_modules"
    env = _fake_npm(tmp_path, monkeypatch, install=f"ln -s '{real}' node_modules")
    with dev_idp_cli("--port", "0", env=env) as server:
        server.wait_for_issuer()
        assert server.interrupt() == 0
        _check_progress(server.stderr())


# -- help ---------------------------------------------------------------------------------------

COMMANDS = [
    [],
    ["dev-idp"],
    ["discover"],
    ["vault"],
    ["vault", "generate-key"],
    ["vault", "rotate-keys"],
    ["vault", "migrate"],
    ["audit"],
    ["audit", "verify"],
    ["version"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: agent-identity {' '.join(command)}".rstrip())
    for markup in ("``", ":class:", ":func:", ":meth:", "::\n"):
        assert markup not in text, f"reStructuredText {markup!r} in the help:\n{text}"
    assert not re.search(r"^\s*\.\. ", text, re.MULTILINE), text  # no directives
    assert all(len(line) <= 100 for line in text.splitlines()), text


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in ("dev-idp", "discover", "vault", "audit", "version"):
        assert f"\n    {name} " in text  # name and its help on one line
    assert "AGENT_IDENTITY_VAULT_URL" in text


def test_dev_idp_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dev-idp", "--help"])
    text = capsys.readouterr().out
    for option in ("--port", "--access-token-ttl", "--ping-endpoint", "--jwt-client-jwk"):
        assert option in text
    # docs/dev-idp.md documents the same options
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dev-idp.md").read_text()
    for option in ("--port", "--access-token-ttl", "--ping-endpoint", "--jwt-client-jwk"):
        assert option in docs


def test_the_console_script_is_installed() -> None:
    assert shutil.which("agent-identity", path=str(SCRIPT.parent)) == str(SCRIPT)
