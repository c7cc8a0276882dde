"""The connect-time SSRF guard of the HTTP layer: an httpcore2 network backend that vets
the address it connects to, and the httpx2 transport built around it (security item 2).

Split from :mod:`agent_identity._http` so that httpcore2 (and httpx2) load with the first
HTTP client, not with ``import agent_identity``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import httpcore2
import httpx2

from agent_identity._netguard import VET_CONNECT, IPAddress, Resolver, vetted_addresses
from agent_identity.oauth.urls import is_public_ip

__all__ = ["GuardedBackend", "GuardedTransport"]


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """An httpcore2 network backend that vets the resolved address at connect time.

    While :data:`VET_CONNECT` is set, ``connect_tcp`` resolves the host itself, refuses
    it unless every address is allowed, and connects to a vetted IP literal. TLS still
    uses the original host name: httpcore2 passes it to ``start_tls`` separately, for SNI
    and certificate verification.
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        allowed: Callable[[IPAddress], bool] = is_public_ip,
        inner: httpcore2.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolve = resolve
        self._allowed = allowed
        self._inner = inner if inner is not None else httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2 interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        if not VET_CONNECT.get():
            return await self._inner.connect_tcp(
                host, port, timeout=timeout, local_address=local_address,
                socket_options=socket_options,
            )  # fmt: skip
        try:
            with anyio.fail_after(timeout):
                addresses = await vetted_addresses(self._resolve, host, port, self._allowed)
        except TimeoutError:
            raise httpcore2.ConnectTimeout("timed out resolving the host") from None
        except OSError as exc:
            raise httpcore2.ConnectError("could not resolve the host") from exc
        failure: httpcore2.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except httpcore2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2 interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not used by agent-identity")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's default transport with its connection pool rebuilt around
    :class:`GuardedBackend`. No proxies, no environment-derived settings except the
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` trust store; TLS is always verified."""

    def __init__(self, backend: GuardedBackend, ssl_context: ssl.SSLContext | None = None) -> None:
        if ssl_context is None:
            ssl_context = httpx2.create_ssl_context(verify=True)
        super().__init__(verify=ssl_context)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )
