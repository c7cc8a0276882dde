"""The CIBA approval driver: ask, wait (poll or ping), and hand out a single-use token.

:func:`request_approval` (what ``UserIdentity.approve`` runs):

1. checks that approval can be asked here (the server has a backchannel authentication
   endpoint, the CIBA grant and the delivery mode; the client authenticates), else
   :class:`~agent_identity.errors.ApprovalUnavailable`;
2. looks for a pending request for the same user, action, scopes and resource in the vault
   (blob kind ``ciba``, encrypted at rest): an agent that restarted resumes waiting for it
   instead of asking the user again. Otherwise it sends the CIBA request (OpenID CIBA Core
   1.0 §7.1) with a binding message built from the action and a random code, and RFC 9396
   ``authorization_details``: those given, or those the client's ``action_details`` map
   the tool to (refused before sending unless the server lists their types), else, where
   the server supports it and a resource is named, the ``agent_action`` type; the
   acknowledgement (§7.3) is stored
   before waiting. A vault lease makes sure that two processes asking for the same action
   at once send one request, not two;
3. waits: poll mode sleeps ``interval`` between token requests (``slow_down`` adds 5 s for
   good, §11), never polls after ``expires_in``; ping mode waits for an authenticated
   notification on a :class:`~agent_identity.approval.ping.PingReceiver` and polls at
   ``interval`` only as a fallback (§10.2);
4. deletes the pending request on every final outcome (token, denial, expiry), validates
   the ID token if one came, refuses a token without the details asked for or for another
   audience (:class:`~agent_identity.errors.TokenPolicyError`), and returns an
   :class:`Approval` bound to the action's hash. With DPoP the token requests carry proofs
   of a key made for this approval, and the token is bound to it.
   Cancelling the wait keeps the pending request for a later resume.

**Start and resume** (``key`` and ``wait``): a caller that knows which call it asks for
(a tool call in a conversation: thread and tool call id) passes it as ``key``. The
pending request is kept under that key, so asking again with the same key continues the
*same* CIBA request (one prompt on the user's device however often a paused agent is
resumed), and a denial or an expiry is remembered for that key (for
:data:`OUTCOME_RETENTION` seconds): asking again gives the same answer without a new
prompt. ``wait`` bounds how long one call waits for the decision: when it passes,
:class:`~agent_identity.errors.ApprovalPending` is raised and the request stays pending
(``wait=0`` starts the request, or polls a pending one once when its interval allows,
and returns at once).

Identical approvals in one process are serialised: each call of an action needs its own
approval. Sleeping uses anyio (cancellable, never blocks the event loop); deadlines use
the client's monotonic clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import unicodedata
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
from pydantic import SecretStr

from agent_identity.approval.action import (
    AUTHORIZATION_DETAILS_TYPE,
    BINDING_MESSAGE_MAX,
    Action,
    binding_message,
    new_binding_code,
)
from agent_identity.approval.action import authorization_details as authorization_details_of
from agent_identity.clock import Clock
from agent_identity.errors import (
    AccessDenied,
    ApprovalDenied,
    ApprovalError,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalPending,
    ApprovalUnavailable,
    ConfigurationError,
    MetadataError,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    VaultCorrupted,
    VersionConflict,
)
from agent_identity.models import AccessToken, TokenResponse
from agent_identity.oauth.ciba import (
    CIBA_GRANT_TYPE,
    BackchannelAuthentication,
    CibaPoller,
    new_notification_token,
)
from agent_identity.oauth.rar import canonical_details, details_to_wire
from agent_identity.oauth.urls import canonical_resource_uri

if TYPE_CHECKING:
    from agent_identity.approval.ping import Notification, PingReceiver
    from agent_identity.grant import Details, UserGrant
    from agent_identity.oauth.dpop import DPoPSigner
    from agent_identity.server import AuthorizationServer
    from agent_identity.vault import TokenVault

__all__ = ["OUTCOME_RETENTION", "PENDING_KIND", "Approval", "purge_expired", "request_approval"]

logger = logging.getLogger("agent_identity.approval")

#: The vault row kind of pending CIBA requests.
PENDING_KIND: Final = "ciba"
#: Seconds a denial or expiry stays remembered for a request made with a ``key``.
OUTCOME_RETENTION: Final = 24 * 3600.0
_FORMAT: Final = 1
#: Errors that end a backchannel request as "approval cannot be asked here" (§13).
_UNAVAILABLE: Final = frozenset(
    {"unknown_user_id", "unauthorized_client", "expired_login_hint_token"}
)

# Indirection for tests that drive a fake clock (the wait itself is anyio's).
_sleep = anyio.sleep


class Approval:
    """A user's approval of one :class:`~agent_identity.approval.action.Action`, holding
    the access token issued for it (bound to ``resource`` and ``scopes``).

    :meth:`use` hands the token out once, for an equal action only (security item 45).
    ``repr`` shows neither the token nor the action's arguments.
    """

    __slots__ = (
        "_clock",
        "_digest",
        "_token",
        "binding_message",
        "resource",
        "scopes",
        "subject",
        "tool",
    )

    def __init__(
        self,
        *,
        action: Action,
        token: AccessToken,
        binding_message: str,
        subject: str | None,
        clock: Clock,
    ) -> None:
        self.tool = action.tool
        self._digest = action.digest
        self._token: AccessToken | None = token
        self._clock = clock
        self.binding_message = binding_message
        self.subject = subject
        self.resource = token.resource
        self.scopes = token.scopes

    @property
    def action_digest(self) -> str:
        """SHA-256 (hex) of the approved action's canonical JSON."""
        return self._digest

    @property
    def used(self) -> bool:
        return self._token is None

    def use(self, action: Action) -> AccessToken:
        """The approved token, for ``action``: once, and only if ``action`` equals the
        approved one. Otherwise :class:`~agent_identity.errors.ApprovalMismatch` (and the
        approval stays usable for the right action if it was not used yet).
        :class:`~agent_identity.errors.ApprovalExpired` if the token expired meanwhile."""
        if not isinstance(action, Action):
            raise ConfigurationError("use() takes the Action that is about to run")
        if not hmac.compare_digest(action.digest, self._digest):
            raise ApprovalMismatch(
                f"this approval is for another action (approved tool {self.tool!r})"
            )
        token, self._token = self._token, None
        if token is None:
            raise ApprovalMismatch("this approval was already used: approvals are single-use")
        if token.expires_within(0, self._clock.monotonic()):
            raise ApprovalExpired("the approved token expired before it was used")
        return token

    def __repr__(self) -> str:
        return (
            f"Approval(tool={self.tool!r}, digest={self._digest[:12]!r}, "
            f"resource={self.resource!r}, scopes={self.scopes!r}, used={self.used})"
        )


@dataclass(slots=True)
class _Pending:
    """A CIBA request waiting for the user, as stored (encrypted) in the vault."""

    client_id: str
    issuer: str
    auth_req_id: str
    expires_at: float  # Unix time: survives restarts (converted to monotonic at load)
    interval: float
    mode: Literal["poll", "ping"]
    notification_token: str | None
    binding_message: str
    action_digest: str
    created_at: float
    format: int = _FORMAT
    # Unix time of the last token request (a resumed request waits out its interval).
    polled_at: float | None = None
    # "denied" or "expired": the final outcome of a keyed request, remembered.
    outcome: str | None = None

    def __repr__(self) -> str:
        return f"_Pending(mode={self.mode!r}, expires_at={self.expires_at!r})"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> _Pending:
        problem = False
        try:
            raw = json.loads(data)
            pending = cls(**raw)
        except (ValueError, TypeError, RecursionError):
            problem = True
        if (
            problem
            or pending.format != _FORMAT
            or pending.mode not in ("poll", "ping")
            or pending.outcome not in (None, "denied", "expired")
        ):
            raise VaultCorrupted("a pending approval row does not parse")
        if not (
            isinstance(pending.expires_at, int | float)
            and math.isfinite(pending.expires_at)
            and isinstance(pending.interval, int | float)
            and pending.interval >= 1
        ):
            raise VaultCorrupted("a pending approval row has invalid times")
        return pending


def _json_key(parts: list[str]) -> str:
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=True)


def _user_prefix(user: UserGrant) -> str:
    """Row-name prefix of every pending approval of this user (and nobody else's)."""
    return f"{_json_key([user.tenant, user.user_id])[:-1]},"


def _row_name(
    user: UserGrant,
    action: Action,
    scopes: Sequence[str],
    resource: str | None,
    details: Sequence[dict[str, Any]] = (),
    key: str | None = None,
) -> str:
    named: dict[str, Any] = {
        "action": action.digest,
        "client_id": user.server.client_id,
        "resource": resource,
        "scopes": sorted(set(scopes)),
    }
    if details:  # given or mapped details are part of what is approved
        named["authorization_details"] = canonical_details(details)
    if key is not None:
        named["key"] = key
    request = json.dumps(
        named,
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(request.encode()).hexdigest()
    return _json_key([user.tenant, user.user_id, user.key.connection, digest])


# -- in-process serialisation of identical approvals ------------------------------------

_LOCKS: weakref.WeakKeyDictionary[TokenVault, dict[str, list[Any]]] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _serialised(vault: TokenVault, name: str) -> AsyncIterator[None]:
    locks = _LOCKS.setdefault(vault, {})
    entry = locks.get(name)
    if entry is None:
        entry = locks[name] = [anyio.Lock(), 0]
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if entry[1] == 0 and locks.get(name) is entry:
            del locks[name]


# -- the flow ----------------------------------------------------------------------------


_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def _printable_text(text: str) -> str:
    """Printable characters only (control and format characters dropped), whitespace
    collapsed: what may reach the user's device."""
    kept = [
        " " if char.isspace() or unicodedata.category(char)[0] == "Z" else char
        for char in text
        if unicodedata.category(char)[0] != "C" or char.isspace()
    ]
    return " ".join("".join(kept).split())


def templated_binding_message(
    action: Action, template: str, code: str, *, max_length: int = BINDING_MESSAGE_MAX
) -> str:
    """``template`` with ``{argument}`` fields filled from ``action`` (``{{``/``}}`` for
    braces), sanitised, cut to ``max_length`` with the random ``code`` always kept: the
    message comes from the developer's template and the action itself, never from
    model-written prose."""
    arguments = action.arguments

    def field(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        if name is None:
            raise ConfigurationError("a binding message template has an unmatched brace")
        if name not in arguments:
            raise ConfigurationError(
                f"the binding message template names {name!r}, which the call does not have"
            )
        value = arguments[name]
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    body = _printable_text(_FIELD.sub(field, template))
    suffix = f" · {code}"
    room = max_length - len(suffix)
    if room < 2:
        raise ConfigurationError("max_length leaves no room for the message")
    if len(body) > room:
        body = body[: room - 1].rstrip() + "…"
    if not body:
        raise ConfigurationError("the binding message template produced no text")
    return body + suffix


def _secret(value: str | SecretStr | None) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value
    return SecretStr(value)


async def request_approval(
    user: UserGrant,
    action: Action,
    *,
    scopes: Sequence[str],
    resource: str | None = None,
    ping: PingReceiver | None = None,
    login_hint: str | None = None,
    id_token_hint: str | SecretStr | None = None,
    login_hint_token: str | SecretStr | None = None,
    user_code: str | SecretStr | None = None,
    requested_expiry: int | None = None,
    acr_values: Sequence[str] = (),
    binding_message_template: str | None = None,
    authorization_details: Details | None = None,
    key: str | None = None,
    wait: float | None = None,
    on_requested: Callable[[], Awaitable[None]] | None = None,
) -> Approval:
    """Ask ``user`` to approve ``action`` and wait for the outcome (see the module doc).

    ``on_requested`` is awaited once a NEW backchannel request was accepted by the server
    (not when a pending one is resumed, nor when a remembered outcome is returned), e.g.
    to write the ``approval.requested`` audit record exactly once per prompt.

    ``binding_message_template`` shapes the message on the user's device (see
    :func:`templated_binding_message`); ``authorization_details`` (typed
    :class:`~agent_identity.oauth.rar.AuthorizationDetail` models or JSON objects) are sent
    as the request's RFC 9396 ``authorization_details`` instead of the SDK's description of
    the action (or of the client's ``action_details`` mapping). ``key`` and ``wait``: start
    and resume (module doc).

    Without a hint, ``login_hint`` is what the client's ``ciba_login_hint`` hook derives
    from the user (some servers want JSON such as ``{"username": "alice"}``), else the
    user's id. Raises
    :class:`~agent_identity.errors.ApprovalDenied`,
    :class:`~agent_identity.errors.ApprovalExpired` or
    :class:`~agent_identity.errors.ApprovalUnavailable`.
    """
    if not isinstance(action, Action):
        raise ConfigurationError("action must be an agent_identity.Action")
    server = user.server
    context = user.context
    metadata = await server.discover()
    endpoint = metadata.backchannel_authentication_endpoint
    if endpoint is None:
        raise ApprovalUnavailable(
            "the authorization server has no backchannel_authentication_endpoint (CIBA)"
        )
    if metadata.grant_types_supported is not None and CIBA_GRANT_TYPE not in (
        metadata.grant_types_supported
    ):
        raise ApprovalUnavailable("the authorization server does not offer the CIBA grant")
    mode: Literal["poll", "ping"] = "ping" if ping is not None else "poll"
    modes = metadata.backchannel_token_delivery_modes_supported
    if modes and mode not in modes:
        raise ApprovalUnavailable(f"the authorization server does not offer CIBA {mode} mode")
    if server.client_auth.method == "none":
        raise ApprovalUnavailable(
            "CIBA requires client authentication: this client has no secret or private key"
        )
    token_endpoint = metadata.token_endpoint
    if token_endpoint is None:
        raise MetadataError("the authorization server metadata has no token_endpoint")
    hints = [h for h in (login_hint, id_token_hint, login_hint_token) if h is not None]
    if len(hints) > 1:
        raise ConfigurationError("give at most one of login_hint, id_token_hint, login_hint_token")
    if not hints:
        hook = context.ciba_login_hint
        login_hint = hook(user.user_id, user.tenant) if hook is not None else user.user_id
        if not isinstance(login_hint, str) or not login_hint:
            raise ConfigurationError("ciba_login_hint must return a non-empty string")
    from agent_identity.grant import words

    wanted = tuple(s for s in words(scopes, "scopes") if s != "openid")
    acr = words(acr_values, "acr_values")
    canonical = canonical_resource_uri(resource) if resource is not None else None
    if key is not None and (not isinstance(key, str) or not key):
        raise ConfigurationError("key must be a non-empty string")
    if wait is not None and not wait >= 0:
        raise ConfigurationError("wait must be a non-negative number of seconds")
    custom = _action_details(context.action_details, action, authorization_details)
    details: list[dict[str, Any]] | None = custom or None
    if custom:
        unsupported = sorted(
            {str(d["type"]) for d in custom} - set(metadata.authorization_details_types_supported)
        )
        if unsupported:
            raise ApprovalUnavailable(
                "the authorization server does not list the authorization_details type(s) "
                f"{', '.join(unsupported)} (RFC 9396); nothing was sent"
            )
    elif (
        canonical is not None
        and AUTHORIZATION_DETAILS_TYPE in metadata.authorization_details_types_supported
    ):
        # only with a resource: servers (oidc-provider) refuse details without one
        details = authorization_details_of(action, resource=canonical)
    vault = context.vault
    clock = context.clock
    name = _row_name(user, action, wanted, canonical, custom, key)
    until = clock.monotonic() + wait if wait is not None else None
    dpop = await server.new_dpop_signer() if server.uses_dpop else None

    async with _serialised(vault, name), contextlib.AsyncExitStack() as stack:
        await purge_expired(vault, clock=clock, prefix=_user_prefix(user))
        async with vault.lease(f"ciba:{name}", ttl=server.lease_ttl, wait=server.lease_wait):
            stored = await _load(vault, name, server, clock)
            if stored is not None and stored[0].outcome is not None:
                # A keyed request already ended: the same call gets the same answer.
                if stored[0].outcome == "denied":
                    raise ApprovalDenied("the user denied this action (asked once for this call)")
                raise ApprovalExpired("this call's approval request expired unanswered")
            if stored is not None:
                pending, version = stored
                poller = CibaPoller.resume(
                    interval=pending.interval,
                    remaining=pending.expires_at - clock.time(),
                    now=clock.monotonic(),
                )
                if pending.polled_at is not None:
                    since = max(0.0, clock.time() - pending.polled_at)
                    poller.ready_at = clock.monotonic() + max(0.0, pending.interval - since)
                logger.info(
                    "resuming a pending approval: tenant=%s user=%s tool=%s",
                    user.tenant,
                    user.user_id,
                    action.tool,
                )
            else:
                code = new_binding_code()
                if binding_message_template is not None:
                    message = templated_binding_message(action, binding_message_template, code)
                else:
                    message = binding_message(action, code)
                notification_token = new_notification_token() if ping is not None else None
                ack = await _start(
                    server,
                    scopes=wanted,
                    login_hint=login_hint,
                    id_token_hint=_secret(id_token_hint),
                    login_hint_token=_secret(login_hint_token),
                    binding_message=message,
                    user_code=_secret(user_code),
                    requested_expiry=requested_expiry,
                    acr_values=acr,
                    authorization_details=details,
                    resource=server.resource_param(canonical),
                    client_notification_token=notification_token,
                )
                poller = CibaPoller.start(ack, now=clock.monotonic())
                pending = _Pending(
                    client_id=server.client_id,
                    issuer=metadata.issuer,
                    auth_req_id=ack.auth_req_id,
                    expires_at=clock.time() + ack.expires_in,
                    interval=float(ack.interval),
                    mode=mode,
                    notification_token=(
                        notification_token.get_secret_value() if notification_token else None
                    ),
                    binding_message=message,
                    action_digest=action.digest,
                    created_at=clock.time(),
                )
                version = 0
            notification: Notification | None = None
            if ping is not None and pending.notification_token is not None:
                # Registered before the row is written: a quick ping is not missed.
                notification = stack.enter_context(
                    ping.expecting(pending.auth_req_id, SecretStr(pending.notification_token))
                )
            if version == 0:
                version = await vault.put_blob(
                    PENDING_KIND, name, pending.to_bytes(), expected_version=0
                )
                if on_requested is not None:
                    # after the row: a failing audit (strict trail) or a cancellation here
                    # leaves the request to be continued, never asked a second time
                    await on_requested()
                logger.info(
                    "approval requested (%s mode): tenant=%s user=%s tool=%s",
                    mode,
                    user.tenant,
                    user.user_id,
                    action.tool,
                )
        waiter = _Waiter(server, vault, clock, pending, poller, name, version, dpop)
        try:
            response = await waiter.wait(notification, until)
        except ApprovalPending:
            await waiter.remember_poll()
            logger.info(
                "approval still pending: tenant=%s user=%s tool=%s",
                user.tenant,
                user.user_id,
                action.tool,
            )
            raise
        except (ApprovalError, AccessDenied) as exc:
            if key is not None and isinstance(exc, ApprovalDenied | ApprovalExpired):
                await waiter.remember_outcome(
                    "denied" if isinstance(exc, ApprovalDenied) else "expired"
                )
            else:
                await _discard(vault, name)
            logger.info(
                "approval ended without a token (%s): tenant=%s user=%s tool=%s",
                type(exc).__name__,
                user.tenant,
                user.user_id,
                action.tool,
            )
            raise
        except OAuthError as exc:
            if not isinstance(exc, ServerError | TemporarilyUnavailable):
                await _discard(vault, name)
            raise
        # Final: the request is consumed at the server; forget it before handing out.
        await _discard(vault, name)

    subject: str | None = None
    if response.id_token is not None:
        claims = await server.validate_id_token(response.id_token, nonce=None, max_age=None)
        sub = claims.get("sub")
        subject = sub if isinstance(sub, str) else None
    from agent_identity.grant import details_problem, policy_problem
    from agent_identity.server import token_facts

    facts = token_facts(response, wanted)
    problem = policy_problem(context, *facts, resource=canonical, requested=wanted)
    if problem is None and details:
        problem = details_problem(response, details, resource=canonical, requested=wanted)
    if problem is not None:
        logger.warning(
            "approval refused: the issued token breaks the token policy (%s): tenant=%s "
            "user=%s tool=%s",
            problem.reason,
            user.tenant,
            user.user_id,
            action.tool,
        )
        raise problem
    token = server.describe(response, resource=canonical, requested=wanted, dpop=dpop, facts=facts)
    logger.info(
        "approval granted: tenant=%s user=%s tool=%s resource=%s",
        user.tenant,
        user.user_id,
        action.tool,
        canonical,
    )
    return Approval(
        action=action,
        token=token,
        binding_message=pending.binding_message,
        subject=subject,
        clock=clock,
    )


def _action_details(mapping: Any, action: Action, given: Details | None) -> list[dict[str, Any]]:
    """The RFC 9396 details of an approval: those given, else what the client's
    ``action_details`` maps the tool to; validated (typed errors) before anything is sent."""
    if given is not None:
        return details_to_wire(given)
    factory = mapping.get(action.tool) if mapping else None
    if factory is None:
        return []
    from pydantic import ValidationError

    from agent_identity.oauth.rar import AuthorizationDetail

    problem: list[str] | None = None
    try:
        produced = factory(action)
    except ValidationError as exc:  # the developer's model refused the action's values
        problem = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
    if problem is not None:  # raised outside the handler: pydantic quotes the values
        raise ConfigurationError(
            f"the authorization details for {action.tool!r} are invalid: "
            f"{', '.join(problem) or '(object)'}"
        )
    if produced is None:
        return []
    if isinstance(produced, AuthorizationDetail | dict):
        produced = [produced]
    return details_to_wire(produced)


async def _start(server: AuthorizationServer, **params: Any) -> BackchannelAuthentication:
    error: OAuthError | None = None
    try:
        return await server.backchannel_authentication(**params)
    except OAuthError as exc:
        error = exc
    # Raised outside the handler, chained explicitly to the server's error.
    assert error is not None
    if isinstance(error, AccessDenied):
        raise ApprovalDenied("the authorization server refused the approval request") from error
    if error.error in _UNAVAILABLE:
        raise ApprovalUnavailable(
            f"the authorization server cannot ask this user for approval ({error.error})",
            error=error.error,
        ) from error
    raise error


async def _load(
    vault: TokenVault, name: str, server: AuthorizationServer, clock: Clock
) -> tuple[_Pending, int] | None:
    row = await vault.get_blob(PENDING_KIND, name)
    if row is None:
        return None
    try:
        pending = _Pending.from_bytes(row.data)
    except VaultCorrupted:
        logger.warning("discarding an unreadable pending approval row")
        await _discard(vault, name)
        return None
    if (
        pending.client_id != server.client_id
        or pending.issuer != server.metadata.issuer
        or pending.expires_at <= clock.time()
    ):
        await _discard(vault, name)
        return None
    return pending, row.version


async def _discard(vault: TokenVault, name: str) -> None:
    with anyio.CancelScope(shield=True):
        await vault.delete_blob(PENDING_KIND, name)


async def purge_expired(vault: TokenVault, *, clock: Clock, prefix: str = "") -> int:
    """Delete expired pending approvals (rows under ``prefix``); returns how many."""
    removed = 0
    now = clock.time()
    for name in await vault.blob_names(PENDING_KIND, prefix):
        row = await vault.get_blob(PENDING_KIND, name)
        if row is None:
            continue
        try:
            expired = _Pending.from_bytes(row.data).expires_at <= now
        except VaultCorrupted:
            continue  # left in place (maybe another version's format); logged at load
        if expired:
            with contextlib.suppress(VersionConflict):
                if await vault.delete_blob(PENDING_KIND, name, expected_version=row.version):
                    removed += 1
    return removed


class _Waiter:
    """Waits for the outcome of one pending request (poll, or ping with poll fallback)."""

    def __init__(
        self,
        server: AuthorizationServer,
        vault: TokenVault,
        clock: Clock,
        pending: _Pending,
        poller: CibaPoller,
        name: str,
        version: int,
        dpop: DPoPSigner | None = None,
    ) -> None:
        self._server = server
        self._dpop = dpop
        self._vault = vault
        self._clock = clock
        self._pending = pending
        self._poller = poller
        self._name = name
        self._version = version

    async def wait(self, notification: Notification | None, until: float | None) -> TokenResponse:
        """Wait for the decision; with ``until`` (monotonic), raise
        :class:`~agent_identity.errors.ApprovalPending` rather than wait past it."""
        clock = self._clock
        poller = self._poller
        while True:
            if notification is None:
                delay = poller.next_wait(clock.monotonic())
                # A poll that is due now is made, even with wait=0 (a resume polls once).
                if until is not None and delay > 0 and clock.monotonic() + delay > until:
                    self._pending_error()
                await _sleep(delay)
            else:
                now = clock.monotonic()
                poller.check_can_poll(now)
                limit = min(poller.ready_at, poller.deadline)
                if until is not None:
                    if now >= until and now < poller.ready_at:
                        self._pending_error()
                    limit = min(limit, max(until, now))
                pinged = await notification.wait(limit - now)
                now = clock.monotonic()
                if pinged:
                    poller.check_can_poll(now)  # §10.2: fetch now, not bound to interval
                elif now < poller.ready_at:
                    continue
                else:
                    poller.next_wait(now)  # raises once the fallback poll is past expiry
            outcome = await self._poll()
            if outcome != "pending":
                return outcome
            if until is not None and clock.monotonic() >= until:
                self._pending_error()

    def _pending_error(self) -> None:
        raise ApprovalPending(
            "the user has not decided yet; the request stays pending",
            binding_message=self._pending.binding_message,
            expires_at=self._pending.expires_at,
        )

    async def remember_poll(self) -> None:
        """Keep when the request was last polled (a resume waits out the interval)."""
        ready_in = max(0.0, self._poller.ready_at - self._clock.monotonic())
        self._pending.polled_at = self._clock.time() - (self._pending.interval - ready_in)
        await self._write()

    async def remember_outcome(self, outcome: str) -> None:
        """Keep a keyed request's final outcome (denied, expired) for the same call."""
        self._pending.outcome = outcome
        self._pending.expires_at = self._clock.time() + OUTCOME_RETENTION
        await self._write()

    async def _write(self) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(VersionConflict):
            self._version = await self._vault.put_blob(
                PENDING_KIND, self._name, self._pending.to_bytes(), expected_version=self._version
            )

    async def _poll(self) -> TokenResponse | Literal["pending"]:
        before = self._poller.interval
        outcome: TokenResponse | Literal["pending"] = await self._server.poll_ciba(
            self._pending.auth_req_id,
            lambda response: self._poller.handle(response, now=self._clock.monotonic()),
            dpop=self._dpop,
        )
        if outcome == "pending" and self._poller.interval != before:
            await self._persist_interval()
        return outcome

    async def _persist_interval(self) -> None:
        # slow_down holds for every later poll, also after a restart.
        self._pending.interval = self._poller.interval
        with contextlib.suppress(VersionConflict):
            self._version = await self._vault.put_blob(
                PENDING_KIND,
                self._name,
                self._pending.to_bytes(),
                expected_version=self._version,
            )
