"""What the SSRF guard of the HTTP layer shares between the request path
(:mod:`agent_identity._http`) and the connect-time network backend
(:mod:`agent_identity._guard`): the resolver type, the flag that marks a request whose
connection must be vetted, and the vetting itself (security item 2). No HTTP library here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar

from agent_identity.errors import SSRFBlockedError

__all__ = ["VET_CONNECT", "IPAddress", "Resolver", "vetted_addresses"]

#: ``async resolve(host, port) -> [ip, ...]``: the resolver used for SSRF checks.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Set by :meth:`HttpDriver.send` while a request whose connection must be vetted is in
#: flight; read by :class:`~agent_identity._guard.GuardedBackend` when the connection pool
#: opens a connection.
VET_CONNECT: ContextVar[bool] = ContextVar("agent_identity_vet_connect", default=False)


async def vetted_addresses(
    resolve: Resolver, host: str, port: int, allowed: Callable[[IPAddress], bool]
) -> list[str]:
    """Resolve ``host`` and return its addresses if *every* one of them is allowed.

    Refusing when any address is non-public (rather than picking a public one) keeps a
    name that mixes public and internal answers from being used at all. Raises
    :class:`SSRFBlockedError`; resolver failures (``OSError``) propagate.
    """
    found = list(await resolve(host, port))
    if not found:
        raise OSError(f"no address found for host {host!r}")
    for text in found:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise SSRFBlockedError(f"host {host!r} resolved to an unparsable address") from None
        if not allowed(address):
            raise SSRFBlockedError(
                f"host {host!r} resolves to a non-public address ({address}); "
                "set allow_private_addresses=True to allow it"
            )
    return found
