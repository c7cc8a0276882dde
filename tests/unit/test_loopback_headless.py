"""LoopbackConsent where no browser opens: it shows the URL, or fails fast.

- :func:`detect_browser_environment` (graphical session, ``webbrowser``, a terminal on
  stderr, ``CI``), with every input injected;
- no browser, interactive: the URL is printed on stderr (or given to ``show_url``) and the
  consent completes when the user follows it;
- a browser that did not open the URL (``webbrowser.open`` or a custom opener returning
  ``False``): the URL is shown;
- no browser and nobody watching: ``ConfigurationError`` at once, naming the handlers that
  work there, before any listener or authorization request.
"""

from __future__ import annotations

import io
import webbrowser
from urllib.parse import urlsplit

import anyio
import pytest
from test_loopback import (
    AUTHORIZATION_URL,
    CALLBACK_QUERY,
    FakeFlow,
    assert_port_closed,
    http_get,
)

from agent_identity.consent import BrowserEnvironment, LoopbackConsent, detect_browser_environment
from agent_identity.errors import ConfigurationError

pytestmark = pytest.mark.anyio

HEADLESS = BrowserEnvironment(browser=False, interactive=False, reason="no display; CI is set")
TERMINAL = BrowserEnvironment(browser=False, interactive=True, reason="no display")
DESKTOP = BrowserEnvironment(browser=True, interactive=True)


class Tty(io.StringIO):
    """A terminal stand-in (raises ValueError once closed, as real streams do)."""

    def isatty(self) -> bool:
        super().isatty()
        return True


def _no_browser() -> None:
    raise webbrowser.Error("could not locate runnable browser")


def _a_browser() -> None:
    return None


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "platform", "find", "browser"),
    [
        ({}, "linux", _a_browser, False),  # a server: no graphical session
        ({"DISPLAY": ":0"}, "linux", _a_browser, True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", _a_browser, True),
        ({"DISPLAY": ":0"}, "linux", _no_browser, False),  # nothing installed
        ({"BROWSER": "w3m"}, "linux", _a_browser, True),  # the user said so
        ({}, "freebsd14", _a_browser, False),
        ({}, "darwin", _a_browser, True),
        ({}, "win32", _a_browser, True),
        ({}, "darwin", _no_browser, False),
    ],
)
def test_detects_a_browser(
    environ: dict[str, str], platform: str, find: object, browser: bool
) -> None:
    found = detect_browser_environment(
        environ=environ,
        platform=platform,
        stderr=Tty(),
        find_browser=find,  # type: ignore[arg-type]
    )
    assert found.browser is browser
    assert found.interactive
    assert bool(found.reason) is not browser


@pytest.mark.parametrize(
    ("environ", "stderr", "interactive", "reason"),
    [
        ({}, Tty(), True, ""),
        ({}, io.StringIO(), False, "stderr is not a terminal"),
        ({"CI": "true"}, Tty(), False, "CI is set"),
        ({"CI": "1"}, Tty(), False, "CI is set"),
        ({"CI": "false"}, Tty(), True, ""),
        ({"CI": ""}, Tty(), True, ""),
    ],
)
def test_detects_an_interactive_session(
    environ: dict[str, str], stderr: io.StringIO, interactive: bool, reason: str
) -> None:
    found = detect_browser_environment(
        environ=environ, platform="darwin", stderr=stderr, find_browser=_a_browser
    )
    assert found.interactive is interactive
    assert found.reason == reason


def test_a_closed_stderr_is_not_interactive() -> None:
    stream = Tty()
    stream.close()
    found = detect_browser_environment(
        environ={}, platform="darwin", stderr=stream, find_browser=_a_browser
    )
    assert not found.interactive


def test_detection_reads_the_real_process_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not detect_browser_environment().interactive


# -- fail fast ----------------------------------------------------------------------------------


async def test_headless_and_non_interactive_fails_at_once() -> None:
    flow = FakeFlow()
    consent = LoopbackConsent(timeout=300, environment=lambda: HEADLESS)
    with anyio.fail_after(2), pytest.raises(ConfigurationError) as info:
        await consent.obtain_consent(flow)
    message = str(info.value)
    assert "DeviceCodeConsent" in message
    assert "WebConsent" in message
    assert "show_url" in message
    assert "no display; CI is set" in message  # says why
    assert flow.redirect_uris == []  # no listener, no authorization request


async def test_a_headless_ci_run_fails_fast_with_the_real_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default detection, as in CI on a server: no display, CI set."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr("sys.platform", "linux")
    with anyio.fail_after(2), pytest.raises(ConfigurationError, match="DeviceCodeConsent"):
        await LoopbackConsent().obtain_consent(FakeFlow())


# -- the URL is shown when no browser opened it -----------------------------------------------


async def _follow_when_shown(flow: FakeFlow, shown: anyio.Event) -> None:
    """The user copies the printed link into a browser, which follows the redirect."""
    await shown.wait()
    path = urlsplit(flow.redirect_uris[-1]).path
    page = await http_get(flow.port, f"{path}?{CALLBACK_QUERY}")
    assert page.status == 200


async def test_no_browser_in_a_terminal_prints_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    flow = FakeFlow()
    printed = anyio.Event()

    async def watch_stderr() -> None:
        while AUTHORIZATION_URL not in capsys.readouterr().err:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        printed.set()

    consent = LoopbackConsent(timeout=5, environment=lambda: TERMINAL)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_stderr)
            tg.start_soon(_follow_when_shown, flow, printed)
            await consent.obtain_consent(flow)
    assert opened == []  # no browser was tried: there is none
    assert flow.completed == [f"{flow.redirect_uris[0]}?{CALLBACK_QUERY}"]
    await assert_port_closed(flow.port)


async def test_the_printed_text_tells_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    flow = FakeFlow()
    consent = LoopbackConsent(timeout=0.2, environment=lambda: TERMINAL)
    with pytest.raises(TimeoutError):
        await consent.obtain_consent(flow)
    err = capsys.readouterr().err
    assert f"\n    {AUTHORIZATION_URL}\n" in err
    assert f"ssh -L {flow.port}:127.0.0.1:{flow.port}" in err
    assert "DeviceCodeConsent" in err


async def test_a_browser_that_did_not_open_shows_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: tried.append(url) and False)
    shown: list[str] = []
    flow = FakeFlow()
    got_it = anyio.Event()

    def show(url: str) -> None:
        shown.append(url)
        got_it.set()

    consent = LoopbackConsent(timeout=5, show_url=show, environment=lambda: DESKTOP)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow_when_shown, flow, got_it)
            await consent.obtain_consent(flow)
    assert tried == [AUTHORIZATION_URL]
    assert shown == [AUTHORIZATION_URL]


async def test_an_opened_browser_shows_nothing_more(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = FakeFlow()
    opened = anyio.Event()

    def open_browser(url: str) -> bool:
        opened.set()
        return True

    monkeypatch.setattr(webbrowser, "open", open_browser)
    shown: list[str] = []
    consent = LoopbackConsent(timeout=5, show_url=shown.append, environment=lambda: DESKTOP)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow_when_shown, flow, opened)
            await consent.obtain_consent(flow)
    assert shown == []
    assert capsys.readouterr().err == ""


async def test_show_url_replaces_the_terminal_even_when_headless() -> None:
    """A developer who delivers the link (a chat message, a log the user reads) is not
    refused: the consent waits for the redirect as usual."""
    flow = FakeFlow()
    got_it = anyio.Event()
    shown: list[str] = []

    async def send_to_chat(url: str) -> None:
        shown.append(url)
        got_it.set()

    consent = LoopbackConsent(timeout=5, show_url=send_to_chat, environment=lambda: HEADLESS)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow_when_shown, flow, got_it)
            await consent.obtain_consent(flow)
    assert shown == [AUTHORIZATION_URL]
    assert len(flow.completed) == 1


async def test_a_custom_opener_returning_false_gets_the_url_shown() -> None:
    flow = FakeFlow()
    got_it = anyio.Event()
    shown: list[str] = []

    async def cannot_open(url: str) -> bool:
        return False

    def show(url: str) -> None:
        shown.append(url)
        got_it.set()

    def never() -> BrowserEnvironment:
        raise AssertionError("a custom opener needs no detection")

    consent = LoopbackConsent(browser=cannot_open, show_url=show, timeout=5, environment=never)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow_when_shown, flow, got_it)
            await consent.obtain_consent(flow)
    assert shown == [AUTHORIZATION_URL]
