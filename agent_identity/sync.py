"""The synchronous facade: the same SDK for code that is not async.

A thin layer over an anyio blocking portal (a private event loop in a background thread).
Nothing is implemented twice: every method hands the call to the async
:class:`~agent_identity.IdentityClient` running on the portal's loop and blocks until it
returns::

    with BlockingIdentityClient(
        "https://idp.example.com", client_id="my-agent", consent=DeviceCodeConsent()
    ) as identity:
        alice = identity.user("alice", tenant="acme")
        alice.consent(scopes=["openid", "calendar.read"],
                      resource="https://calendar.example/api")
        token = alice.token(resource="https://calendar.example/api",
                            scopes=["calendar.read"])

The async client is constructed and entered *inside* the portal's loop (its HTTP client,
locks and vault belong to that loop). Code that is already running on that loop (through
:meth:`BlockingIdentityClient.call`) uses :attr:`BlockingIdentityClient.client` directly.
The portal is thread-safe: any number of threads may call in at once. Calling a blocking
method from the portal's own loop thread raises ``RuntimeError`` (it would deadlock).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from agent_identity.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from agent_identity.approval import Action, Approval
    from agent_identity.client import IdentityClient
    from agent_identity.consent.base import ConsentHandler
    from agent_identity.grant import Details
    from agent_identity.models import AccessToken, Grant
    from agent_identity.user import UserIdentity

__all__ = ["BlockingIdentityClient", "BlockingUser"]

T = TypeVar("T")


class BlockingIdentityClient:
    """A blocking :class:`~agent_identity.IdentityClient`.

    Takes exactly the arguments of :class:`~agent_identity.IdentityClient`. Use it as a
    context manager (or call :meth:`open` and :meth:`close`): entering starts the portal
    thread, constructs the async client on the portal's loop and runs its discovery
    (RFC 8414); leaving closes the client, then stops the portal.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._factory: Callable[[], IdentityClient] = functools.partial(_new_client, args, kwargs)
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._client: IdentityClient | None = None
        self._client_cm: contextlib.AbstractContextManager[IdentityClient] | None = None
        self._description = repr(args[0]) if args else "?"

    @classmethod
    def from_env(cls, **overrides: Any) -> BlockingIdentityClient:
        """Like :meth:`IdentityClient.from_env <agent_identity.IdentityClient.from_env>`
        (``AGENT_IDENTITY_*`` variables; keyword arguments override them)."""
        self = cls.__new__(cls)
        self._factory = functools.partial(_client_from_env, overrides)
        self._portal_cm = None
        self._portal = None
        self._client = None
        self._client_cm = None
        self._description = "from_env"
        return self

    def __repr__(self) -> str:
        if self._client is not None:
            return f"BlockingIdentityClient({self._client!r})"
        return f"BlockingIdentityClient({self._description}, closed)"

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> BlockingIdentityClient:
        """Start the portal, then construct and enter the async client on its loop."""
        if self._portal is not None:
            raise ConfigurationError("this BlockingIdentityClient is already open")
        portal_cm = start_blocking_portal()
        portal = portal_cm.__enter__()
        try:
            client = portal.call(self._construct)
            # Entered and exited in one task of the portal (the client's task group must
            # be), whichever threads call open() and close().
            client_cm = portal.wrap_async_context_manager(client)
            client_cm.__enter__()
        except BaseException as exc:
            portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._portal_cm, self._portal, self._client = portal_cm, portal, client
        self._client_cm = client_cm
        return self

    async def _construct(self) -> IdentityClient:
        return self._factory()

    def close(self) -> None:
        """Close the async client (on its loop), then stop the portal. Idempotent."""
        portal_cm, portal = self._portal_cm, self._portal
        client_cm, self._client_cm = self._client_cm, None
        self._portal_cm = self._portal = self._client = None
        if portal_cm is None or portal is None:
            return
        try:
            if client_cm is not None:
                client_cm.__exit__(None, None, None)
        finally:
            portal_cm.__exit__(None, None, None)

    def __enter__(self) -> BlockingIdentityClient:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the loop -------------------------------------------------------------------------

    @property
    def portal(self) -> BlockingPortal:
        """The blocking portal running the client's event loop."""
        if self._portal is None:
            raise ConfigurationError(
                "the BlockingIdentityClient is not open: use 'with BlockingIdentityClient(...)'"
            )
        return self._portal

    @property
    def client(self) -> IdentityClient:
        """The async :class:`~agent_identity.IdentityClient`, for code running on the
        portal's loop."""
        if self._client is None:
            raise ConfigurationError(
                "the BlockingIdentityClient is not open: use 'with BlockingIdentityClient(...)'"
            )
        return self._client

    @property
    def issuer(self) -> str:
        return self.client.issuer

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await async_fn(*args)`` on the client's loop and return its result."""
        return self.portal.call(async_fn, *args)

    # -- the API --------------------------------------------------------------------------

    def user(self, user_id: str, *, tenant: str = "default") -> BlockingUser:
        """The blocking view of :meth:`IdentityClient.user
        <agent_identity.IdentityClient.user>`."""
        return BlockingUser(self, self.client.user(user_id, tenant=tenant))

    def client_credentials(
        self,
        *,
        scopes: str | Sequence[str] = (),
        resource: str | None = None,
        refresh: bool = False,
    ) -> AccessToken:
        """A token for the agent itself (OAuth 2.1 §4.2); see
        :meth:`IdentityClient.client_credentials
        <agent_identity.IdentityClient.client_credentials>`."""
        return self.portal.call(
            functools.partial(
                self.client.client_credentials, scopes=scopes, resource=resource, refresh=refresh
            )
        )


class BlockingUser:
    """The blocking view of a :class:`~agent_identity.UserIdentity`: the same methods,
    each run on the client's loop through the portal."""

    def __init__(self, identity: BlockingIdentityClient, user: UserIdentity) -> None:
        self._identity = identity
        #: the async :class:`~agent_identity.UserIdentity`, for code on the portal's loop
        self.async_user = user
        self.tenant = user.tenant
        self.user_id = user.user_id

    def __repr__(self) -> str:
        return f"BlockingUser(tenant={self.tenant!r}, user_id={self.user_id!r})"

    def _call(self, async_fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        return self._identity.portal.call(functools.partial(async_fn, **kwargs))

    def token(
        self, *, resource: str | None = None, scopes: str | Sequence[str] = ()
    ) -> AccessToken:
        """The narrowest valid access token for ``resource`` with ``scopes`` (RFC 8707);
        see :meth:`UserIdentity.token <agent_identity.UserIdentity.token>`."""
        return self._call(self.async_user.token, resource=resource, scopes=scopes)

    def consent(
        self,
        *,
        scopes: str | Sequence[str],
        resource: str | None = None,
        resources: Sequence[str] = (),
        handler: ConsentHandler | None = None,
        prompt: str | None = None,
        login_hint: str | None = None,
        acr_values: str | Sequence[str] = (),
        max_age: int | None = None,
        extra_params: dict[str, str] | None = None,
        authorization_details: Details | None = None,
    ) -> Grant:
        """Ask the user to consent (authorization code + PKCE, RFC 7636); see
        :meth:`UserIdentity.consent <agent_identity.UserIdentity.consent>`."""
        return self._call(
            self.async_user.consent,
            scopes=scopes,
            resource=resource,
            resources=resources,
            handler=handler,
            prompt=prompt,
            login_hint=login_hint,
            acr_values=acr_values,
            max_age=max_age,
            extra_params=extra_params,
            authorization_details=authorization_details,
        )

    def exchange(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        actor: bool = True,
        subject_resource: str | None = None,
        authorization_details: Details | None = None,
    ) -> AccessToken:
        """RFC 8693 token exchange with the agent as actor; see
        :meth:`UserIdentity.exchange <agent_identity.UserIdentity.exchange>`."""
        return self._call(
            self.async_user.exchange,
            resource=resource,
            scopes=scopes,
            actor=actor,
            subject_resource=subject_resource,
            authorization_details=authorization_details,
        )

    def approve(
        self,
        *,
        action: Action,
        scopes: str | Sequence[str],
        resource: str | None = None,
        login_hint: str | None = None,
        id_token_hint: str | SecretStr | None = None,
        login_hint_token: str | SecretStr | None = None,
        user_code: str | SecretStr | None = None,
        requested_expiry: int | None = None,
        acr_values: str | Sequence[str] = (),
        binding_message: str | None = None,
        authorization_details: Details | None = None,
        key: str | None = None,
        wait: float | None = None,
    ) -> Approval:
        """Ask the user to approve ``action`` on their device (OpenID CIBA, poll mode) and
        wait for the decision; see :meth:`UserIdentity.approve
        <agent_identity.UserIdentity.approve>`. ``approval.use(action)`` releases the
        token, once, for that exact action."""
        return self._call(
            self.async_user.approve,
            action=action,
            scopes=scopes,
            resource=resource,
            login_hint=login_hint,
            id_token_hint=id_token_hint,
            login_hint_token=login_hint_token,
            user_code=user_code,
            requested_expiry=requested_expiry,
            acr_values=acr_values,
            binding_message=binding_message,
            authorization_details=authorization_details,
            key=key,
            wait=wait,
        )

    def grant(self) -> Grant | None:
        """What this user granted at this connection, or ``None``."""
        return self._call(self.async_user.grant)

    def connections(self) -> list[Grant]:
        """Every grant this user has in the vault, at any connection of this tenant."""
        return self._call(self.async_user.connections)

    def disconnect(self, *, revoke: bool = True) -> None:
        """Revoke the user's refresh token (RFC 7009), then forget the grant
        (``revoke=False``: forget it only)."""
        self._call(self.async_user.disconnect, revoke=revoke)


def _new_client(args: tuple[Any, ...], kwargs: dict[str, Any]) -> IdentityClient:
    from agent_identity.client import IdentityClient

    return IdentityClient(*args, **kwargs)


def _client_from_env(overrides: dict[str, Any]) -> IdentityClient:
    from agent_identity.client import IdentityClient

    return IdentityClient.from_env(**overrides)
