"""Consent for server agents: start in one request, complete on any worker.

A web or chat agent serving many users across several workers cannot keep a coroutine
waiting for a browser to come back. :class:`WebConsent` splits the authorization code
flow in two:

- **start** (:meth:`WebConsent.start`, or a tool call that needs consent while the
  identity client's handler is a ``WebConsent``): the authorization request is built as
  for every handler (PKCE S256, ``state``, ``nonce``, RFC 8707 resources, PAR, the union
  of held and needed scopes) and the pending authorization (PKCE verifier, ``state``,
  ``nonce``, issuer, client id, redirect URI, requested scopes and resources, token
  endpoint) is **sealed in the vault** (AES-GCM, row kind ``webconsent``, named by a hash
  of ``state``) before the URL is returned. A tool call gets
  :class:`~agent_identity.errors.ConsentRequired` carrying ``authorization_url``: show it
  to the user as a "connect your account" link;
- **complete** (:meth:`WebConsent.complete`, run by the ASGI callback app of
  :meth:`WebConsent.callback`) on whichever worker the redirect reaches, after restarts
  too, as long as the workers share the vault: the row is consumed (deleted by
  compare-and-swap: single use, also across processes), then the callback is validated
  exactly as every other handler does (security items 16-18: ``state`` bound to the
  flow, RFC 9207 ``iss`` compared by exact string *before* any ``error`` is trusted), the
  code is redeemed at the token endpoint recorded with the flow (security item 17) and
  the grant stored.

Pending authorizations are short-lived (``lifetime``, 10 minutes by default; expired rows
are purged) and bound to one user, tenant, issuer and client.

Resuming the waiting tool call: the callback app calls ``on_complete`` with a
:class:`WebConsentResult` (who, what, and the ``resume`` data the application attached
when the consent started, e.g. a LangGraph thread id); the application resumes its agent
there (``Command(resume=...)`` for an interrupted graph) or simply lets the user ask
again: the token is in the vault for every worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

import anyio
from pydantic import SecretStr

from agent_identity.consent.base import ConsentFlow
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    ConsentDenied,
    ConsentRequired,
    StateMismatch,
    VaultCorrupted,
    VersionConflict,
)
from agent_identity.oauth import authorize as authz
from agent_identity.oauth.urls import check_browser_url

if TYPE_CHECKING:
    from agent_identity.clock import Clock
    from agent_identity.vault import TokenVault

__all__ = [
    "PENDING_KIND",
    "IdentityLike",
    "WebConsent",
    "WebConsentCallback",
    "WebConsentResult",
    "resuming",
]

logger = logging.getLogger("agent_identity.consent")

#: The vault row kind of pending web consents.
PENDING_KIND: Final = "webconsent"
_FORMAT: Final = 1
_MAX_RESUME: Final = 4096
_PURGE_EVERY: Final = 60.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_RESUME: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "agent_identity_web_consent_resume", default=None
)


@contextlib.contextmanager
def resuming(data: Mapping[str, Any] | None) -> Iterator[None]:
    """Attach ``data`` (JSON values: a thread id, a tool call id) to the web consents
    started inside the block by the identity client's handler; the callback hands it back
    in :attr:`WebConsentResult.resume`. :class:`~agent_identity.tools.ToolGuard` does this
    for every protected call (``tool``, ``thread_id``, ``tool_call_id``)."""
    token = _RESUME.set(data)
    try:
        yield
    finally:
        _RESUME.reset(token)


def set_resume(data: Mapping[str, Any] | None) -> contextvars.Token[Mapping[str, Any] | None]:
    """:func:`resuming` without a context manager (the tool guard's hot path): returns the
    token to give :func:`reset_resume`."""
    return _RESUME.set(data)


def reset_resume(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    _RESUME.reset(token)


class IdentityLike(Protocol):
    """What completing a web consent needs of the identity client (an
    :class:`~agent_identity.IdentityClient`): its vault, its clock and its users. (The
    consent layer sits below the client and the grants: it names them only through
    such protocols.)"""

    @property
    def vault(self) -> TokenVault: ...

    @property
    def clock(self) -> Clock: ...

    def user(self, user_id: str, *, tenant: str = "default") -> Any: ...


@runtime_checkable
class _DetachableFlow(Protocol):
    """A consent flow that can be started without being kept in this process."""

    @property
    def grant(self) -> Any: ...

    @property
    def resources(self) -> tuple[str, ...]: ...

    async def authorization_request(
        self, redirect_uri: str, *, lifetime: float
    ) -> tuple[authz.PendingAuthorization, str]: ...

    @property
    def dpop(self) -> Any: ...

    @property
    def authorization_details(self) -> tuple[dict[str, Any], ...]: ...


@dataclass(frozen=True)
class WebConsentResult:
    """A consent completed by the callback: who granted what, and the ``resume`` data the
    application attached when it started (never a secret of the flow)."""

    tenant: str
    user: str
    issuer: str
    scopes: tuple[str, ...]
    resource: str | None
    resources: tuple[str, ...]
    resume: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Sealed:
    """A pending web consent as sealed in the vault (JSON, encrypted at rest)."""

    tenant: str
    user: str
    connection: str
    issuer: str
    client_id: str
    redirect_uri: str
    state: str
    nonce: str | None
    code_verifier: str
    scopes: list[str]
    resources: list[str]
    wire_resources: list[str]
    primary: str | None
    iss_parameter_supported: bool
    token_endpoint: str
    max_age: int | None
    created_at: float  # Unix time: survives restarts and other workers
    expires_at: float
    resume: dict[str, Any]
    format: int = _FORMAT
    #: RFC 9449 §10: the DPoP key the code is bound to (its export: a private JWK or a key
    #: provider's reference), sealed with the flow so that any worker can redeem the code
    #: and keep the key with the grant; ``dpop_jkt`` its thumbprint.
    dpop_key: dict[str, Any] | None = None
    dpop_jkt: str | None = None
    #: RFC 9396: the authorization details asked for.
    authorization_details: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"_Sealed(tenant={self.tenant!r}, user={self.user!r}, scopes={self.scopes!r})"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> _Sealed:
        sealed: _Sealed | None
        try:
            sealed = cls(**json.loads(data))
        except (ValueError, TypeError):
            sealed = None
        if sealed is None or sealed.format != _FORMAT:
            raise VaultCorrupted("a pending web consent row does not parse")
        return sealed

    def pending(self, *, monotonic_now: float, wall_now: float) -> authz.PendingAuthorization:
        """The flow record as the callback validation expects it (monotonic times)."""
        return authz.PendingAuthorization(
            issuer=self.issuer,
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            state=self.state,
            nonce=self.nonce,
            code_verifier=SecretStr(self.code_verifier),
            scopes=tuple(self.scopes),
            resources=tuple(self.wire_resources),
            iss_parameter_supported=self.iss_parameter_supported,
            token_endpoint=self.token_endpoint,
            created_at=monotonic_now - max(0.0, wall_now - self.created_at),
            expires_at=monotonic_now + (self.expires_at - wall_now),
            max_age=self.max_age,
            dpop_jkt=self.dpop_jkt,
            authorization_details=tuple(self.authorization_details),
        )


def _row_name(state: str) -> str:
    """Rows are named by a hash of ``state``: the vault's row names are not secret."""
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def _check_resume(resume: Mapping[str, Any] | None) -> dict[str, Any]:
    if resume is None:
        return {}
    if not isinstance(resume, Mapping):
        raise ConfigurationError("resume must be a mapping of JSON values")
    try:
        text = json.dumps(dict(resume), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    if text is None:  # raised outside the handler
        raise ConfigurationError("resume must hold JSON values only (strings, numbers, ...)")
    if len(text) > _MAX_RESUME:
        raise ConfigurationError(f"resume data is limited to {_MAX_RESUME} bytes of JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


class WebConsent:
    """The consent handler of server agents (see the module docstring).

    :param redirect_uri: the callback URL registered for the client, served by
        :meth:`callback` on every worker (``https``; ``http`` only on loopback with the
        client's ``allow_insecure_loopback``).
    :param lifetime: seconds a started consent may wait for its callback (default 600).

    Give it to the identity client (``IdentityClient(..., consent=WebConsent(...))``) so
    that tool calls needing consent start one and raise
    :class:`~agent_identity.errors.ConsentRequired` with the link, and route the callback
    on every worker::

        consent = WebConsent("https://agent.example/oauth/callback")
        identity = IdentityClient(issuer, client_id=..., client_secret=...,
                                  consent=consent, vault=shared_vault)
        app.add_route("/oauth/callback", consent.callback(identity, on_complete=resume),
                      methods=["GET"])
    """

    def __init__(self, redirect_uri: str, *, lifetime: float = authz.DEFAULT_FLOW_LIFETIME) -> None:
        if not isinstance(redirect_uri, str):
            raise ConfigurationError("redirect_uri must be a string")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ConfigurationError(
                "redirect_uri must be an absolute http(s) URL without a fragment"
            )
        if not 10 <= lifetime <= 3600:
            raise ConfigurationError("lifetime must be between 10 and 3600 seconds")
        self.redirect_uri = redirect_uri
        self.lifetime = float(lifetime)
        self._last_purge = float("-inf")

    def __repr__(self) -> str:
        return f"WebConsent(redirect_uri={self.redirect_uri!r}, lifetime={self.lifetime!r})"

    # -- start ------------------------------------------------------------------------------

    async def start(
        self,
        user: Any,
        *,
        scopes: str | Sequence[str],
        resource: str | None = None,
        resources: Sequence[str] = (),
        resume: Mapping[str, Any] | None = None,
        prompt: str | None = None,
        login_hint: str | None = None,
        acr_values: str | Sequence[str] = (),
        max_age: int | None = None,
        extra_params: dict[str, str] | None = None,
    ) -> str:
        """Start a consent for ``user`` (``identity.user("alice")``; what a tool needs:
        ``resource`` and ``scopes``) and return the URL to show them. ``resume`` (JSON
        values, e.g. a thread id) comes back in the :class:`WebConsentResult` of the
        completion, on whatever worker."""
        grant = _grant_of(user)
        handler = _Starter(self, _check_resume(resume))
        try:
            await grant.consent(
                scopes=scopes,
                resource=resource,
                resources=resources,
                handler=handler,
                prompt=prompt,
                login_hint=login_hint,
                acr_values=acr_values,
                max_age=max_age,
                extra_params=extra_params,
            )
        except ConsentRequired as exc:
            if exc.authorization_url is not None and handler.started:
                return exc.authorization_url
            raise
        raise ConsentRequired("the web consent did not start")  # pragma: no cover

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        """As the identity client's handler: start the consent and raise
        :class:`~agent_identity.errors.ConsentRequired` with the link (a server agent
        cannot wait for the browser; the callback completes it on any worker). The resume
        data is what :func:`resuming` attached (a protected tool call attaches its own)."""
        await self._begin(flow, _check_resume(_RESUME.get()))

    async def _begin(self, flow: ConsentFlow, resume: dict[str, Any]) -> None:
        if not isinstance(flow, _DetachableFlow):
            raise ConfigurationError("WebConsent needs a consent flow of the identity client")
        grant_flow: _DetachableFlow = flow
        pending, url = await grant_flow.authorization_request(
            self.redirect_uri, lifetime=self.lifetime
        )
        check_browser_url(url, allow_insecure_loopback=flow.allow_insecure_loopback)
        grant = grant_flow.grant
        vault = grant.context.vault
        clock_now = grant.context.clock.time()
        sealed = _Sealed(
            tenant=flow.tenant,
            user=flow.user,
            connection=grant.key.connection,
            issuer=pending.issuer,
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            state=pending.state,
            nonce=pending.nonce,
            code_verifier=pending.code_verifier.get_secret_value(),
            scopes=list(flow.scopes),
            resources=list(grant_flow.resources),
            wire_resources=list(pending.resources),
            primary=flow.resource,
            iss_parameter_supported=pending.iss_parameter_supported,
            token_endpoint=pending.token_endpoint,
            max_age=pending.max_age,
            created_at=clock_now,
            expires_at=clock_now + self.lifetime,
            resume=resume,
            dpop_key=grant_flow.dpop.key.export() if grant_flow.dpop is not None else None,
            dpop_jkt=pending.dpop_jkt,
            authorization_details=[dict(d) for d in grant_flow.authorization_details],
        )
        await self._purge(vault, clock_now)
        await vault.put_blob(
            PENDING_KIND, _row_name(pending.state), sealed.to_bytes(), expected_version=0
        )
        logger.info(
            "web consent started: tenant=%s user=%s scopes=%s",
            flow.tenant,
            flow.user,
            " ".join(flow.scopes),
        )
        raise ConsentRequired(
            "the user must open the authorization link to grant access",
            scopes=flow.scopes,
            resource=flow.resource,
            authorization_url=url,
            expires_at=sealed.expires_at,
        )

    async def _purge(self, vault: TokenVault, now: float) -> None:
        """Delete expired pending consents (at most once a minute per handler)."""
        if now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        for name in await vault.blob_names(PENDING_KIND):
            row = await vault.get_blob(PENDING_KIND, name)
            if row is None:
                continue
            try:
                expired = _Sealed.from_bytes(row.data).expires_at <= now
            except VaultCorrupted:
                continue
            if expired:
                with contextlib.suppress(VersionConflict):
                    await vault.delete_blob(PENDING_KIND, name, expected_version=row.version)

    # -- complete ---------------------------------------------------------------------------

    async def complete(self, identity: IdentityLike, callback_url: str) -> WebConsentResult:
        """Complete the consent the redirect ``callback_url`` (or its query string) belongs
        to, on this worker. Raises :class:`~agent_identity.errors.StateMismatch`
        (unknown, replayed or expired ``state``),
        :class:`~agent_identity.errors.IssuerMismatch`,
        :class:`~agent_identity.errors.ConsentDenied`, ... before any token request when
        the response is not acceptable."""
        callback = authz.parse_callback(callback_url)
        state = callback.get("state")
        if not state:
            raise StateMismatch("authorization response has no state")
        vault = identity.vault
        clock = identity.clock
        name = _row_name(state)
        row = await vault.get_blob(PENDING_KIND, name)
        if row is None:
            raise StateMismatch("authorization response state is unknown or was already used")
        # Single use across workers: whoever deletes this version owns the callback.
        try:
            consumed = await vault.delete_blob(PENDING_KIND, name, expected_version=row.version)
        except VersionConflict:
            consumed = False
        if not consumed:
            raise StateMismatch("authorization response state is unknown or was already used")
        sealed = _Sealed.from_bytes(row.data)
        if not hmac.compare_digest(sealed.state.encode(), state.encode()):
            raise StateMismatch("authorization response state does not belong to this flow")
        user = identity.user(sealed.user, tenant=sealed.tenant)
        grant = user.main
        server = grant.server
        if (
            sealed.issuer != server.issuer
            or sealed.client_id != server.client_id
            or sealed.connection != grant.key.connection
        ):
            raise StateMismatch("this authorization was started for another server or client")
        pending = sealed.pending(monotonic_now=clock.monotonic(), wall_now=clock.time())
        flows = authz.PendingAuthorizations(max_pending=1)
        flows.add(pending, now=clock.monotonic())
        requested = tuple(sealed.scopes)
        try:
            # The same checks, in the same order, as every other handler: state bound and
            # fresh, RFC 9207 iss before any error is trusted, then error, then code.
            _, code = authz.validate_callback(
                callback, flows, now=clock.monotonic(), expected=pending
            )
        except ConsentDenied:
            await grant.audit_event(
                "consent.denied", scopes_requested=requested, resource=sealed.primary
            )
            raise
        record = await _redeem_and_store(grant, pending, code, sealed)
        await grant.audit_event(
            "consent.granted",
            scopes_requested=requested,
            scopes_granted=record.scopes,
            resource=sealed.primary,
        )
        logger.info(
            "web consent completed: tenant=%s user=%s scopes=%s",
            sealed.tenant,
            sealed.user,
            " ".join(record.scopes),
        )
        return WebConsentResult(
            tenant=sealed.tenant,
            user=sealed.user,
            issuer=sealed.issuer,
            scopes=tuple(record.scopes),
            resource=sealed.primary,
            resources=tuple(record.resources),
            resume=dict(sealed.resume),
        )

    def callback(
        self,
        identity: IdentityLike,
        *,
        on_complete: Callable[[WebConsentResult], Awaitable[Any] | Any] | None = None,
        done_url: str | None = None,
    ) -> WebConsentCallback:
        """The ASGI app that receives the redirect (see :class:`WebConsentCallback`)."""
        return WebConsentCallback(self, identity, on_complete=on_complete, done_url=done_url)


class _Starter:
    """The handler :meth:`WebConsent.start` runs a grant's consent with."""

    def __init__(self, consent: WebConsent, resume: dict[str, Any]) -> None:
        self._consent = consent
        self._resume = resume
        self.started = False

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.started = True
        await self._consent._begin(flow, self._resume)


class WebConsentCallback:
    """The redirect endpoint of a :class:`WebConsent`, as an ASGI application.

    Route it at the redirect URI's path on every worker: in Starlette or FastAPI with
    ``app.add_route("/oauth/callback", callback, methods=["GET"])`` (a ``Route``), or
    mount it under a prefix (``app.mount("/oauth", callback)`` serves
    ``/oauth/callback``). It has no framework dependency, answers ``GET`` on whatever path
    it is given, and never redirects unless ``done_url`` (a fixed URL of your app) is set.
    Pages carry ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer`` (the
    callback URL holds the code). Failures show the error type, never a server-supplied
    description.
    """

    def __init__(
        self,
        consent: WebConsent,
        identity: IdentityLike,
        *,
        on_complete: Callable[[WebConsentResult], Awaitable[Any] | Any] | None = None,
        done_url: str | None = None,
    ) -> None:
        if done_url is not None:
            parts = urlsplit(done_url)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ConfigurationError("done_url must be an absolute http(s) URL")
        self.consent = consent
        self.identity = identity
        self.on_complete = on_complete
        self.done_url = done_url
        self.completed = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"WebConsentCallback(redirect_uri={self.consent.redirect_uri!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        if scope.get("method") != "GET":
            # HEAD too: a link checker or prefetcher must not spend the single-use
            # authorization before the user's browser arrives
            await _page(send, 405, "Method not allowed.", extra=[(b"allow", b"GET")])
            return
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        try:
            result = await self.consent.complete(self.identity, "?" + query)
        except AgentIdentityError as exc:
            self.failed += 1
            logger.warning("web consent callback refused: %s", type(exc).__name__)
            await _page(
                send,
                400,
                f"Authorization failed ({type(exc).__name__}). Return to the agent and try again.",
            )
            return
        self.completed += 1
        if self.on_complete is not None:
            try:
                outcome = self.on_complete(result)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # the grant is stored; the hook's failure is logged
                logger.error("web consent on_complete hook raised %s", type(exc).__name__)
        if self.done_url is not None:
            await _page(
                send, 303, "Authorization complete.", extra=[(b"location", self.done_url.encode())]
            )
            return
        await _page(
            send, 200, "Authorization complete. You can close this window and return to the agent."
        )


async def _redeem_and_store(
    grant: Any, pending: authz.PendingAuthorization, code: SecretStr, sealed: _Sealed
) -> Any:
    async def job() -> Any:
        # The code is single-use: once redeemed, its grant must be stored (shielded from
        # cancellation, bounded in time).
        server = grant.server
        dpop = None if sealed.dpop_key is None else server.load_dpop_signer(sealed.dpop_key)
        with anyio.CancelScope(shield=True), anyio.fail_after(server.policy.timeout * 3):
            response, claims = await server.redeem(
                pending, code, resource=sealed.primary, dpop=dpop
            )
            return await grant.store_consent(
                response,
                claims,
                requested=tuple(sealed.scopes),
                resources=tuple(sealed.resources),
                primary=sealed.primary,
                dpop=dpop,
                authorization_details=tuple(sealed.authorization_details),
            )

    return await grant.context.detached.run(job)


def _grant_of(user: Any) -> Any:
    """The grant of ``identity.user(...)`` (a grant itself is accepted too)."""
    main = getattr(user, "main", user)
    if not callable(getattr(main, "consent", None)) or not hasattr(main, "store_consent"):
        raise ConfigurationError("start() takes identity.user(...) (a UserIdentity)")
    return main


async def _page(
    send: Send, status: int, message: str, *, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = (
        "<!doctype html><meta charset=utf-8><title>agent-identity</title>"
        f"<p id=outcome>{escape(message)}</p>"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
