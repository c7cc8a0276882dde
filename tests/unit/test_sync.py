"""The blocking facade: one async client on a portal loop, reached from any thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest

from agent_identity import (
    AccessToken,
    BlockingIdentityClient,
    ConfigurationError,
    IdentityClient,
    MetadataError,
)
from agent_identity.sync import BlockingUser

ISSUER = "https://as.example"


class FakeServer:
    """Metadata and a client-credentials token endpoint; records the thread of each
    request."""

    def __init__(self, *, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.token_requests = 0
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.threads.add(threading.get_ident())
        if request.url.path.startswith("/.well-known/"):
            return httpx2.Response(
                200,
                json={
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{ISSUER}/authorize",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                },
            )
        if request.url.path == "/token":
            with self._lock:
                self.token_requests += 1
                n = self.token_requests
            return httpx2.Response(
                200,
                json={"access_token": f"at-{n}", "token_type": "Bearer", "expires_in": 3600},
            )
        return httpx2.Response(404)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def _blocking(server: FakeServer, **kwargs: Any) -> BlockingIdentityClient:
    return BlockingIdentityClient(
        ISSUER,
        client_id="agent",
        client_secret="s3cret",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server)),
        **kwargs,
    )


@pytest.fixture
def identity(server: FakeServer) -> Iterator[BlockingIdentityClient]:
    with _blocking(server) as blocking:
        yield blocking


def test_the_async_client_lives_on_the_portal_loop(
    identity: BlockingIdentityClient, server: FakeServer
) -> None:
    assert isinstance(identity.client, IdentityClient)
    # discovery ran inside the portal's loop thread, never in the caller's thread
    assert server.threads
    assert threading.get_ident() not in server.threads
    loop_thread = identity.call(_thread_id)
    assert server.threads == {loop_thread}
    assert identity.client.metadata.issuer == ISSUER
    assert identity.issuer == ISSUER
    assert identity.client_id == "agent"


async def _thread_id() -> int:
    await anyio.lowlevel.checkpoint()
    return threading.get_ident()


def test_client_credentials_blocks_and_returns_the_token(
    identity: BlockingIdentityClient, server: FakeServer
) -> None:
    token = identity.client_credentials(scopes="a b")
    assert isinstance(token, AccessToken)
    assert token.value.get_secret_value() == "at-1"
    assert token.scopes == ("a", "b")
    assert identity.client_credentials(scopes="a b") is token  # cached by the async client
    assert identity.client_credentials(scopes="a b", refresh=True).value.get_secret_value() == (
        "at-2"
    )
    assert server.token_requests == 2


def test_many_threads_share_one_client(
    identity: BlockingIdentityClient, server: FakeServer
) -> None:
    """Ten threads at once: one token request (the async client's single flight), one
    token object for all, all requests on the portal's thread."""
    with ThreadPoolExecutor(10) as pool:
        tokens = list(pool.map(lambda _: identity.client_credentials(scopes="x"), range(10)))
    assert server.token_requests == 1
    assert all(t is tokens[0] for t in tokens)
    assert len(server.threads) == 1


def test_call_runs_any_coroutine_function_and_propagates_errors(
    identity: BlockingIdentityClient,
) -> None:
    assert identity.call(identity.client.discover).issuer == ISSUER

    async def fails(message: str) -> None:
        raise ConfigurationError(message)

    with pytest.raises(ConfigurationError, match="boom"):
        identity.call(fails, "boom")


def test_blocking_call_from_the_portal_loop_is_refused(identity: BlockingIdentityClient) -> None:
    async def reenter() -> None:
        identity.client_credentials()

    with pytest.raises(RuntimeError):
        identity.call(reenter)


def test_user_is_a_blocking_view_of_the_async_user(identity: BlockingIdentityClient) -> None:
    alice = identity.user("alice", tenant="acme")
    assert isinstance(alice, BlockingUser)
    assert alice.async_user is identity.client.user("alice", tenant="acme")
    assert (alice.tenant, alice.user_id) == ("acme", "alice")
    assert alice.grant() is None
    assert alice.connections() == []
    alice.disconnect()  # nothing to revoke: no request
    assert "alice" in repr(alice)


def test_not_open_is_a_clear_error(server: FakeServer) -> None:
    blocking = _blocking(server)
    for attribute in ("client", "portal"):
        with pytest.raises(ConfigurationError, match="not open"):
            getattr(blocking, attribute)
    with pytest.raises(ConfigurationError, match="not open"):
        blocking.user("alice")
    assert "closed" in repr(blocking)
    blocking.close()  # closing a client that never opened is harmless


def test_close_stops_the_portal_thread_and_is_idempotent(server: FakeServer) -> None:
    before = threading.active_count()
    blocking = _blocking(server).open()
    assert threading.active_count() == before + 1
    with pytest.raises(ConfigurationError, match="already open"):
        blocking.open()
    blocking.close()
    blocking.close()
    assert threading.active_count() == before
    with pytest.raises(ConfigurationError):
        blocking.client_credentials()


def test_a_failed_discovery_raises_from_enter_and_stops_the_portal() -> None:
    before = threading.active_count()
    with (
        pytest.raises(MetadataError),
        _blocking(FakeServer(issuer="https://evil.example")),
    ):
        pytest.fail("entered despite an issuer mismatch")  # pragma: no cover
    assert threading.active_count() == before


def test_bad_arguments_raise_from_enter_and_stop_the_portal() -> None:
    before = threading.active_count()
    with pytest.raises(ConfigurationError), BlockingIdentityClient(ISSUER, client_id=""):
        pytest.fail("entered without a client id")  # pragma: no cover
    assert threading.active_count() == before


def test_from_env(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    monkeypatch.setenv("AGENT_IDENTITY_ISSUER", ISSUER)
    monkeypatch.setenv("AGENT_IDENTITY_CLIENT_ID", "env-agent")
    monkeypatch.setenv("AGENT_IDENTITY_CLIENT_SECRET", "s3cret")
    transport = httpx2.MockTransport(server)
    with BlockingIdentityClient.from_env(
        http_client=httpx2.AsyncClient(transport=transport)
    ) as identity:
        assert identity.client_id == "env-agent"
        assert identity.client_credentials().value.get_secret_value() == "at-1"
    assert "from_env" in repr(identity)


def test_repr_holds_no_secret(server: FakeServer) -> None:
    with _blocking(server) as identity:
        identity.client_credentials()
        assert "s3cret" not in repr(identity)
        assert "at-1" not in repr(identity)
        assert ISSUER in repr(identity)


@pytest.mark.parametrize("name", ["token", "consent", "exchange", "approve", "disconnect"])
def test_the_blocking_user_takes_every_argument_of_the_async_user(name: str) -> None:
    """Parity: a blocking agent can do what an async one can (RAR details, several
    resources, login hints, CIBA approvals, forgetting without revoking)."""
    import inspect

    from agent_identity.user import UserIdentity

    wanted = inspect.signature(getattr(UserIdentity, name)).parameters
    got = inspect.signature(getattr(BlockingUser, name)).parameters
    # ping mode needs a receiver served on the caller's loop: not offered by the facade
    missing = set(wanted) - set(got) - {"ping"}
    assert missing == set()
    for parameter in set(wanted) & set(got) - {"self"}:
        assert got[parameter].default == wanted[parameter].default, parameter


def test_the_blocking_user_forwards_every_argument(identity: BlockingIdentityClient) -> None:
    user = identity.user("alice")
    seen: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        async def record(**kwargs: Any) -> str:
            seen[name] = kwargs
            return name

        return record

    for name in ("consent", "exchange", "approve", "disconnect"):
        setattr(user.async_user, name, recorder(name))
    details = [{"type": "payment_initiation", "actions": ["initiate"]}]
    user.consent(
        scopes="a",
        resources=["https://r1.example", "https://r2.example"],
        login_hint="alice@example.com",
        extra_params={"ui_locales": "fr"},
        authorization_details=details,
    )
    assert seen["consent"]["resources"] == ["https://r1.example", "https://r2.example"]
    assert seen["consent"]["login_hint"] == "alice@example.com"
    assert seen["consent"]["extra_params"] == {"ui_locales": "fr"}
    assert seen["consent"]["authorization_details"] == details
    user.exchange(resource="https://r1.example", authorization_details=details)
    assert seen["exchange"]["authorization_details"] == details
    action = object()
    user.approve(action=action, scopes="pay", wait=5.0, key="k")  # type: ignore[arg-type]
    assert (seen["approve"]["action"], seen["approve"]["wait"], seen["approve"]["key"]) == (
        action, 5.0, "k"
    )  # fmt: skip
    user.disconnect(revoke=False)
    assert seen["disconnect"] == {"revoke": False}
