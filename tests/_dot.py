"""Pytest support for the DEV ONLY django-oauth-toolkit server (``tests/dot_server``).

- :class:`DotServer` starts and stops one server subprocess (``sys.executable``, its own
  SQLite database in a temporary directory, ``127.0.0.1`` and an ephemeral port) and
  drives its ``/dev/`` hooks;
- :class:`DotBrowser` plays alice's browser through DOT's real login, consent and device
  pages (CSRF included) and hands the final redirect to a loopback ``redirect_uri``; it
  is an async callable usable as ``LoopbackConsent(browser=...)``;
- fixtures: ``dot_server`` (session) and ``dot_server_factory`` (function).

Without Django and django-oauth-toolkit importable the fixtures skip on a developer
machine and fail when ``CI`` is set (as ``tests/_idp.py`` does for Node.js).
"""

from __future__ import annotations

import contextlib
import html.parser
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urljoin, urlsplit

import httpx2
import pytest

from agent_identity.devidp._process import ServerProcess

_SERVE: Final = Path(__file__).resolve().parent / "dot_server" / "serve.py"
_SKIP_REASON: Final = "needs django and django-oauth-toolkit (pip install -e '.[test]')"

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"

#: Loopback redirect URI registered for the code-flow clients; DOT accepts any port for
#: loopback IP literals (RFC 8252 §7.3).
DOT_REDIRECT_URI: Final = "http://127.0.0.1/callback"

#: login -> DEV ONLY password and profile.
DOT_USERS: Final[Mapping[str, Mapping[str, str]]] = {
    "alice": {
        "password": "dev-password-alice",
        "email": "alice@example.test",
        "first_name": "Alice",
        "last_name": "Example",
    },
    "bob": {
        "password": "dev-password-bob",
        "email": "bob@example.test",
        "first_name": "Bob",
        "last_name": "Example",
    },
}


@dataclass(frozen=True)
class DotClient:
    """One seeded DOT application. DOT allows ONE grant type per application (plus
    refresh), so the code flow, client credentials and device flow need separate ones."""

    client_id: str
    client_type: str  # "confidential" | "public"
    grant_type: str  # DOT's authorization_grant_type
    method: str  # the token_endpoint_auth_method the SDK should end up using
    secret: str | None = None

    @property
    def redirect_uris(self) -> list[str]:
        return [DOT_REDIRECT_URI] if self.grant_type == "authorization-code" else []


#: client_id -> client. DEV ONLY secrets.
DOT_CLIENTS: Final[Mapping[str, DotClient]] = {
    c.client_id: c
    for c in (
        DotClient(
            "agent-confidential",
            "confidential",
            "authorization-code",
            "client_secret_basic",
            "dot-secret-agent-confidential",
        ),
        DotClient(
            "agent-post",
            "confidential",
            "authorization-code",
            "client_secret_post",
            "dot-secret-agent-post",
        ),
        DotClient("agent-public", "public", "authorization-code", "none"),
        DotClient("agent-jwt", "confidential", "authorization-code", "private_key_jwt"),
        DotClient(
            "agent-service",
            "confidential",
            "client-credentials",
            "client_secret_basic",
            "dot-secret-agent-service",
        ),
        DotClient("agent-device", "public", DEVICE_CODE_GRANT, "none"),
        # The resource servers' client: introspection (RFC 7662) in the tests' checks.
        DotClient(
            "resource-server",
            "confidential",
            "client-credentials",
            "client_secret_basic",
            "dot-secret-resource-server",
        ),
    )
}


class DotServerError(RuntimeError):
    """The DOT test server could not be started or driven."""


def django_available() -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("django", "oauth2_provider"))
    except (ImportError, ValueError):
        return False


def _generate_client_jwk() -> dict[str, Any]:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", private=True, auto_kid=True)
    jwk = dict(key.as_dict(private=True))
    jwk.setdefault("alg", "ES256")
    jwk.setdefault("use", "sig")
    return jwk


def _public_jwk(private_jwk: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in private_jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}


class DotServer:
    """One DOT server process (DEV ONLY). ``with DotServer() as dot: ...``.

    ``access_token_ttl`` / ``refresh_token_ttl`` in seconds; ``assertion_audience`` is the
    ``aud`` the ``private_key_jwt`` validator accepts at start (``issuer``,
    ``token_endpoint`` or ``both``; the ``/dev/`` hook changes it later);
    ``template_database`` is a migrated SQLite file to copy instead of migrating.
    """

    def __init__(
        self,
        *,
        access_token_ttl: int = 300,
        refresh_token_ttl: int = 14 * 24 * 3600,
        assertion_audience: str = "both",
        jwt_client_private_jwk: Mapping[str, Any] | None = None,
        template_database: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._jwt_private = dict(jwt_client_private_jwk or _generate_client_jwk())
        self._startup_timeout = startup_timeout
        self._template = template_database
        self._config: dict[str, Any] = {
            "access_token_ttl": access_token_ttl,
            "refresh_token_ttl": refresh_token_ttl,
            "assertion_audience": assertion_audience,
            "users": {k: dict(v) for k, v in DOT_USERS.items()},
            "clients": [
                {
                    "client_id": c.client_id,
                    "client_type": c.client_type,
                    "grant_type": c.grant_type,
                    "client_secret": c.secret,
                    "redirect_uris": c.redirect_uris,
                    "jwk": _public_jwk(self._jwt_private)
                    if c.method == "private_key_jwt"
                    else None,
                }
                for c in DOT_CLIENTS.values()
            ],
        }
        self._server = ServerProcess("dot-server", DotServerError)
        self._issuer: str | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        return f"<DotServer (dev only) {self._issuer or 'stopped'}>"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        if self._server.started:
            return self
        config = dict(self._config)
        config["database"] = "db.sqlite3"  # in the server's work directory, its cwd
        if self._template is not None:
            config["template_database"] = str(self._template)
        # The server exits when its stdin closes: even a SIGKILLed pytest leaves nothing.
        env = {**os.environ, "DOT_SERVER_EXIT_WITH_PARENT": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        ready = self._server.start(
            lambda path: [sys.executable, str(_SERVE), "--config", str(path)],
            config=config,
            env=env,
            timeout=self._startup_timeout,
        )
        self._issuer = str(ready["issuer"])
        self._port = int(ready["port"])
        return self

    def stop(self) -> None:
        self._server.stop()
        self._issuer = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        """The server's stderr so far (diagnostics; no tokens or secrets are logged)."""
        return self._server.log_text()

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:PORT/o`` (DOT mounted under ``/o``, no trailing slash)."""
        if self._issuer is None:
            raise DotServerError("the DOT server is not running")
        return self._issuer

    @property
    def origin(self) -> str:
        return self.issuer.rsplit("/", 1)[0]

    @property
    def jwt_client_private_jwk(self) -> dict[str, Any]:
        """The private JWK (ES256) whose public half is registered for ``agent-jwt``."""
        return dict(self._jwt_private)

    # -- /dev/ hooks ----------------------------------------------------------------------

    async def _hook(self, method: str, path: str, data: Mapping[str, str] | None = None) -> Any:
        async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as client:
            response = await client.request(method, f"{self.origin}{path}", data=data)
        if response.status_code == 204:
            return None
        if response.status_code >= 400:
            raise DotServerError(f"dev hook {method} {path} failed: HTTP {response.status_code}")
        return response.json()

    async def requests(self) -> list[dict[str, Any]]:
        """Token, revocation, introspection and device authorization requests since the
        last :meth:`clear_requests` (see ``dot_server.hooks``)."""
        return list(await self._hook("GET", "/dev/requests"))

    async def clear_requests(self) -> None:
        await self._hook("DELETE", "/dev/requests")

    async def subjects(self) -> dict[str, str]:
        """login -> the ``sub`` DOT issues for that user (its primary key)."""
        return dict((await self._hook("GET", "/dev/health"))["subjects"])

    async def set_quirk(self, name: str, on: bool = True) -> dict[str, bool]:
        return dict(
            await self._hook("POST", "/dev/quirks", {"name": name, "on": "true" if on else ""})
        )

    async def quirks(self) -> dict[str, bool]:
        return dict(await self._hook("GET", "/dev/quirks"))

    async def set_assertion_audience(self, value: str) -> None:
        await self._hook("POST", "/dev/assertion-audience", {"value": value})

    async def revoke_grants(self, login: str) -> dict[str, int]:
        """Revoke every access and refresh token of ``login`` server-side."""
        return dict(await self._hook("POST", f"/dev/users/{login}/revoke-grants"))

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection as the resource servers' client (``resource-server``)."""
        client = DOT_CLIENTS["resource-server"]
        assert client.secret is not None
        async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
            response = await http.post(
                f"{self.issuer}/introspect/",
                data={"token": token},
                auth=(client.client_id, client.secret),
            )
        if response.status_code != 200:
            raise DotServerError(f"introspection failed: HTTP {response.status_code}")
        return dict(response.json())

    def browser(self, login: str = "alice", *, approve: bool = True) -> DotBrowser:
        return DotBrowser(login, approve=approve)


# --------------------------------------------------------------------------- browser


class _Form:
    def __init__(self, ident: str, action: str, method: str) -> None:
        self.ident = ident
        self.action = action
        self.method = method.lower()
        self.fields: dict[str, str] = {}
        self.buttons: list[tuple[str, str]] = []


class _Page(html.parser.HTMLParser):
    """The forms of a page: inputs (all types) and named submit buttons."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.text = text
        self._form: _Form | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = _Form(a.get("id", ""), a.get("action", ""), a.get("method", "get"))
            self.forms.append(self._form)
        elif self._form is not None and tag in ("input", "button") and a.get("name"):
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            if kind == "submit":
                self._form.buttons.append((a["name"], a.get("value", "")))
            else:
                self._form.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None

    def form_with(self, field: str) -> _Form | None:
        for form in self.forms:
            if field in form.fields or any(name == field for name, _ in form.buttons):
                return form
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class DotBrowser:
    """A headless stand-in for the user's browser at the DOT server (DEV ONLY).

    ``await browser(authorization_url)`` signs in through Django's login form, allows (or
    with ``approve=False`` denies) on DOT's consent form, then follows the redirect to the
    client's loopback ``redirect_uri`` (RFC 8252 §7.3) as a real browser would, and
    returns that final URL. :meth:`complete_device` does the same on DOT's RFC 8628
    pages. Cookies persist across calls, like a browser session.
    """

    def __init__(self, login: str = "alice", *, approve: bool = True, max_steps: int = 20):
        if login not in DOT_USERS:
            raise DotServerError(f"unknown DOT test user {login!r}")
        self.login = login
        self.approve = approve
        self.max_steps = max_steps
        self.visited: list[str] = []
        self._cookies = CookieJar()

    def __repr__(self) -> str:
        return f"DotBrowser(login={self.login!r}, approve={self.approve!r})"

    async def __call__(self, url: str) -> str:
        return await self._drive(url, user_code=None)

    async def complete_device(self, verification_uri: str, user_code: str | None = None) -> str:
        """Enter ``user_code`` (pre-filled by ``verification_uri_complete``), sign in,
        accept or deny. Returns the URL of the final status page."""
        return await self._drive(verification_uri, user_code=user_code)

    async def _drive(self, url: str, *, user_code: str | None) -> str:
        origin = _origin(url)
        method, target, data = "GET", url, None
        logged_in = False
        async with httpx2.AsyncClient(
            cookies=self._cookies, trust_env=False, follow_redirects=False, timeout=30.0
        ) as client:
            for _ in range(self.max_steps):
                self.visited.append(target.split("?", 1)[0])
                response = await client.request(method, target, data=data)
                if response.is_redirect:
                    location = urljoin(target, response.headers["location"])
                    if _origin(location) == origin:
                        method, target, data = "GET", location, None
                        continue
                    if urlsplit(location).hostname in ("127.0.0.1", "::1"):
                        with contextlib.suppress(httpx2.HTTPError):
                            await client.get(location)  # hand the response to the listener
                    return location
                if response.status_code >= 500:
                    raise DotServerError(f"DOT answered HTTP {response.status_code} at {target}")
                page = _Page(response.text)
                form, fields = self._next_form(page, response.status_code, user_code)
                if form is None:
                    return target  # a final page (the device grant's status)
                if "password" in fields:
                    if logged_in:
                        raise DotServerError(f"DOT rejected the login of {self.login!r}")
                    logged_in = True
                if "user_code" in fields:
                    user_code = None  # submit a code once
                method, target, data = "POST", urljoin(target, form.action or target), fields
            raise DotServerError(f"gave up after {self.max_steps} steps")

    def _next_form(
        self, page: _Page, status: int, user_code: str | None
    ) -> tuple[_Form | None, dict[str, str]]:
        """The form to submit next and its fields, or ``(None, {})`` on a final page."""
        login = page.form_with("password")
        if login is not None:  # Django's login form
            password = DOT_USERS[self.login]["password"]
            return login, {**login.fields, "username": self.login, "password": password}
        consent = page.form_with("allow")
        if consent is not None:  # DOT's authorization form: "allow" present means yes
            fields = dict(consent.fields)
            if self.approve:
                fields["allow"] = dict(consent.buttons)["allow"]
            return consent, fields
        code_form = page.form_with("user_code")
        if code_form is not None:  # DOT's device page: enter the user code
            code = user_code or code_form.fields.get("user_code", "")
            if not code or status >= 400:
                raise DotServerError("DOT's device page wants a (valid) user code")
            return code_form, {**code_form.fields, "user_code": code}
        confirm = page.form_with("action")
        if confirm is not None:  # DOT's device accept/deny page
            return confirm, {**confirm.fields, "action": "accept" if self.approve else "deny"}
        if status >= 400 or "Error:" in page.text:
            raise DotServerError(f"DOT error page (HTTP {status})")
        return None, {}


# --------------------------------------------------------------------------- fixtures


def _require_django() -> None:
    if not django_available():
        if os.environ.get("CI"):
            pytest.fail(f"{_SKIP_REASON} (CI is set, so this is an error)")
        pytest.skip(_SKIP_REASON)


@pytest.fixture(scope="session")
def dot_template_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, made once per session and copied by every server."""
    _require_django()
    directory = tmp_path_factory.mktemp("dot-template")
    config = directory / "config.json"
    database = directory / "template.sqlite3"
    config.write_text(
        json.dumps(
            {
                "database": str(database),
                "access_token_ttl": 300,
                "refresh_token_ttl": 3600,
                "users": {},
                "clients": [],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, str(_SERVE), "--config", str(config), "--migrate-only"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"could not migrate the DOT template database:\n{done.stderr[-3000:]}")
    return database


@pytest.fixture(scope="session")
def dot_server(dot_template_database: Path) -> Iterator[DotServer]:
    """A session-wide DOT server with the default configuration."""
    server = DotServer(template_database=dot_template_database)
    try:
        server.start()
    except DotServerError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dot_server_factory(dot_template_database: Path) -> Iterator[Callable[..., DotServer]]:
    """Start DOT servers with special settings; each is stopped after the test."""
    started: list[DotServer] = []

    def factory(**kwargs: Any) -> DotServer:
        kwargs.setdefault("template_database", dot_template_database)
        server = DotServer(**kwargs)
        try:
            server.start()
        except DotServerError as exc:
            pytest.fail(str(exc))
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()
