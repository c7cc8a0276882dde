"""The I/O layer: the only module of agent_identity that imports httpx2.

The sans-IO protocol modules (``agent_identity.oauth``) build :class:`HttpRequest` values
and parse :class:`HttpResponse` values; :class:`HttpDriver` performs them. Everything the
network can do wrong is turned into the SDK's error tree here, at one boundary:

- URL policy before any I/O: ``https`` only, loopback ``http`` only after the explicit
  :attr:`TransportPolicy.allow_insecure_loopback` opt-in (OAuth 2.1 §1.5, RFC 9700 §2.6;
  security item 1).
- SSRF: URLs learned from servers must not reach private, loopback or link-local addresses
  (RFC 9700 §4.17; security item 2). Literal hosts are refused outright, host names are
  resolved and vetted before the request, and the connection itself is made to a vetted
  address by a guarded network backend, so a DNS answer that changes between the check and
  the connection ("DNS rebinding") is caught too. Redirects are never followed.
- Response bodies are read with a hard size cap (security item 4).
- Retries (tenacity) only for requests marked idempotent, honouring ``Retry-After``
  (RFC 9110 §10.2.3); token and refresh requests are never repeated, since a rotated
  refresh token sent twice can make the server revoke the whole grant (RFC 9700 §4.14.2).

No exception message, log line or ``repr`` produced here contains a request body, a header
value or a query string.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import urlencode, urlsplit

import anyio
import httpcore2
import httpx2

from agent_identity._limits import MAX_LIFETIME, parse_delta_seconds
from agent_identity._version import __version__
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InsecureURLError,
    InvalidResponse,
    RequestTimeout,
    SSRFBlockedError,
    TransportError,
)
from agent_identity.models import AccessToken
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.urls import (
    check_endpoint_url,
    check_ssrf_literal,
    is_public_ip,
    lenient_path,
    normalized_path,
)
from agent_identity.oauth.www_authenticate import Challenge, parse_www_authenticate

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "HttpDriver",
    "Resolver",
    "TokenAuth",
    "TransportPolicy",
    "create_client",
    "parse_retry_after",
    "resolve_host",
]

_log = logging.getLogger("agent_identity.http")

#: ``async resolve(host, port) -> [ip, ...]``: the resolver used for SSRF checks.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_Sleep = Callable[[float], Awaitable[None]]
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_DEFAULT_PORTS = {"https": 443, "http": 80}
_DELTA_SECONDS = re.compile(r"[0-9]+")

#: Set by :meth:`HttpDriver.send` while a request whose connection must be vetted is in
#: flight; read by :class:`_GuardedBackend` when the connection pool opens a connection.
_VET_CONNECT: ContextVar[bool] = ContextVar("agent_identity_vet_connect", default=False)


_USER_AGENT = f"agent-identity/{__version__}"


@dataclass(frozen=True, slots=True)
class TransportPolicy:
    """How the SDK may use the network.

    ``allow_insecure_loopback`` is the explicit, documented opt-in that lets plain ``http``
    reach ``127.0.0.0/8``, ``[::1]`` and ``localhost`` (local test or development issuers);
    it never relaxes ``https`` anywhere else. ``allow_private_addresses`` lets URLs learned
    from servers reach private, loopback and link-local addresses (an internal deployment).
    ``timeout`` bounds each request attempt as a whole, in seconds; ``max_retries`` is the
    number of extra attempts for idempotent requests; a ``Retry-After`` longer than
    ``max_retry_wait`` seconds is not waited for (the response is returned instead).
    """

    allow_insecure_loopback: bool = False
    allow_private_addresses: bool = False
    max_response_bytes: int = 1_048_576
    timeout: float = 30.0
    max_retries: int = 2
    max_retry_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.max_response_bytes <= 0:
            raise ConfigurationError("max_response_bytes must be positive")
        if not self.timeout > 0:
            raise ConfigurationError("timeout must be positive")
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must not be negative")
        if not self.max_retry_wait >= 0:
            raise ConfigurationError("max_retry_wait must not be negative")


_DEFAULT_POLICY = TransportPolicy()


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` value (RFC 9110 §10.2.3) into seconds to wait.

    Accepts delta-seconds (ASCII digits, clamped to one year) or an HTTP-date (a date in
    the past gives ``0.0``); returns ``None`` for a missing or unparsable value. ``now``
    defaults to the current UTC time. Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        # The bounded-number rule: ASCII digits only, clamped to a year (far beyond any
        # ``max_retry_wait``), so an absurd value is simply "too long to wait".
        seconds = parse_delta_seconds(text, maximum=MAX_LIFETIME)
        return None if seconds is None else float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    return max(0.0, (when - current).total_seconds())


async def resolve_host(host: str, port: int) -> list[str]:
    """Resolve ``host`` to IP address strings with the running event loop's resolver."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _where(url: str) -> str:
    """``scheme://host[:port]/path`` for messages: no userinfo, no query, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path[:200]}"


async def _vetted_addresses(
    resolve: Resolver, host: str, port: int, allowed: Callable[[_IPAddress], bool]
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


class _GuardedBackend(httpcore2.AsyncNetworkBackend):
    """An httpcore2 network backend that vets the resolved address at connect time.

    While :data:`_VET_CONNECT` is set, ``connect_tcp`` resolves the host itself, refuses
    it unless every address is allowed, and connects to a vetted IP literal. TLS still
    uses the original host name: httpcore2 passes it to ``start_tls`` separately, for SNI
    and certificate verification.
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        allowed: Callable[[_IPAddress], bool] = is_public_ip,
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
        if not _VET_CONNECT.get():
            return await self._inner.connect_tcp(
                host, port, timeout=timeout, local_address=local_address,
                socket_options=socket_options,
            )  # fmt: skip
        try:
            with anyio.fail_after(timeout):
                addresses = await _vetted_addresses(self._resolve, host, port, self._allowed)
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


class _GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's default transport with its connection pool rebuilt around
    :class:`_GuardedBackend`. No proxies, no environment-derived settings except the
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` trust store; TLS is always verified."""

    def __init__(self, backend: _GuardedBackend, ssl_context: ssl.SSLContext | None = None) -> None:
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


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # lower-case ASCII, IPv6 without brackets
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _target(url: str) -> _Target:
    """Parse ``url`` exactly as httpx2 will, and insist that our own parser agrees."""
    try:
        parsed = httpx2.URL(url)
        ours = urlsplit(url).hostname
    except (httpx2.InvalidURL, ValueError):
        raise InsecureURLError(f"URL {_where(url)} cannot be parsed") from None
    host = parsed.raw_host.decode("ascii").lower()
    if ours is None or ours.lower() != host:
        raise InsecureURLError(f"URL {_where(url)} has an ambiguous host")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(parsed.scheme, 0)
    return _Target(scheme=parsed.scheme, host=host, port=port)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HttpDriver:
    """Performs :class:`HttpRequest` values under a :class:`TransportPolicy`.

    Use as ``async with HttpDriver(policy) as http: response = await http.send(request)``.
    A client passed in is used as it is and is not closed by :meth:`aclose`; the
    connect-time DNS guard only exists on the client the driver creates itself (an
    injected client still gets every check made before the request). ``resolve`` and
    ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        policy: TransportPolicy = _DEFAULT_POLICY,
        client: httpx2.AsyncClient | None = None,
        *,
        resolve: Resolver | None = None,
        sleep: _Sleep | None = None,
    ) -> None:
        self._policy = policy
        self._resolve: Resolver = resolve if resolve is not None else resolve_host
        #: Awaited between retry attempts; replace it in tests to avoid waiting.
        self.sleep: _Sleep = sleep if sleep is not None else anyio.sleep
        self._trusted: set[tuple[str, str, int]] = set()
        # URLs that already passed the policy check, with their parsed target: endpoints
        # repeat, and the check is pure, so it runs once per distinct URL.
        self._checked: dict[str, _Target] = {}
        self._owns_client = client is None
        if client is None:
            client = httpx2.AsyncClient(
                transport=_GuardedTransport(_GuardedBackend(self._resolve_now)),
                follow_redirects=False,
                timeout=policy.timeout,
                trust_env=False,
            )
        self._client = client

    @property
    def policy(self) -> TransportPolicy:
        return self._policy

    def __repr__(self) -> str:
        return f"HttpDriver(policy={self._policy!r}, trusted_origins={len(self._trusted)})"

    async def _resolve_now(self, host: str, port: int) -> Sequence[str]:
        return await self._resolve(host, port)

    def trust_origin(self, url: str) -> None:
        """Trust the origin (scheme, host, port) of ``url`` as configured by the user.

        Server-supplied URLs on a trusted origin skip the private-address checks: the
        IdentityClient trusts the issuer it was configured with, so a local test issuer on
        ``http://127.0.0.1:PORT`` can name its own endpoints. The URL must pass the
        endpoint policy (raises :class:`InsecureURLError`).
        """
        check_endpoint_url(
            url, allow_insecure_loopback=self._policy.allow_insecure_loopback, what="trusted origin"
        )
        self._trusted.add(_target(url).origin)

    def is_trusted(self, url: str) -> bool:
        """Whether ``url`` is on an origin passed to :meth:`trust_origin`."""
        try:
            return _target(url).origin in self._trusted
        except InsecureURLError:
            return False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this driver created it."""
        if self._owns_client:
            await self._client.aclose()

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send ``request`` and return the complete response for any non-3xx status.

        Raises :class:`InsecureURLError` / :class:`SSRFBlockedError` before any I/O when the
        URL breaks the policy, :class:`InvalidResponse` for a redirect or an oversized or
        undecodable body, :class:`RequestTimeout` and :class:`TransportError` when the
        exchange fails. 4xx and 5xx responses are returned, not raised.
        """
        policy = self._policy
        target = self._checked.get(request.url)
        if target is None:
            check_endpoint_url(
                request.url, allow_insecure_loopback=policy.allow_insecure_loopback, what="request"
            )
            target = _target(request.url)
            if len(self._checked) < 1024:
                self._checked[request.url] = target
        vet = (
            request.server_supplied
            and not policy.allow_private_addresses
            and target.origin not in self._trusted
        )
        if vet:
            check_ssrf_literal(request.url, allow_private=False)
            if not _is_ip_literal(target.host):
                await self._precheck(target, request.url)
        if not request.idempotent or policy.max_retries == 0:
            return await self._attempt(request, vet)
        # tenacity is imported on the first retryable request (it is not small).
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            retry_if_result,
            stop_after_attempt,
        )

        retrying = AsyncRetrying(
            sleep=self._sleep_between,
            stop=stop_after_attempt(policy.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable_error) | retry_if_result(self._is_retryable),
            retry_error_callback=_last_outcome,
            before_sleep=_log_retry,
        )
        response: HttpResponse = await retrying(self._attempt, request, vet)
        return response

    async def _sleep_between(self, seconds: float) -> None:
        await self.sleep(seconds)

    async def _precheck(self, target: _Target, url: str) -> None:
        try:
            with anyio.fail_after(self._policy.timeout):
                await _vetted_addresses(self._resolve, target.host, target.port, is_public_ip)
        except TimeoutError:
            raise RequestTimeout(f"resolving {_where(url)} timed out") from None
        except OSError as exc:
            raise TransportError(f"could not resolve the host of {_where(url)}") from exc

    def _is_retryable(self, response: HttpResponse) -> bool:
        if response.status_code not in _RETRY_STATUSES:
            return False
        delay = parse_retry_after(response.header("retry-after"))
        return delay is None or delay <= self._policy.max_retry_wait

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            response = outcome.result()
            if isinstance(response, HttpResponse):
                delay = parse_retry_after(response.header("retry-after"))
                if delay is not None:
                    return min(delay, self._policy.max_retry_wait)
        from tenacity import wait_random_exponential

        backoff = wait_random_exponential(multiplier=0.5, max=self._policy.max_retry_wait)
        return float(backoff(state))

    async def _attempt(self, request: HttpRequest, vet: bool) -> HttpResponse:
        token = _VET_CONNECT.set(vet)
        try:
            return await self._exchange(request)
        finally:
            _VET_CONNECT.reset(token)

    def _build(self, request: HttpRequest) -> httpx2.Request | None:
        headers = {
            "accept": "application/json",
            "accept-encoding": "identity",
            "user-agent": _USER_AGENT,
        }
        headers.update({name.lower(): value for name, value in request.headers.items()})
        content: bytes | None = None
        if request.form is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
            content = urlencode(request.form_pairs()).encode("ascii")
        elif request.body is not None:
            content = request.body
        try:
            return self._client.build_request(
                request.method,
                request.url,
                headers=headers,
                content=content,
                timeout=self._policy.timeout,
            )
        except (httpx2.InvalidURL, httpx2.HTTPError, ValueError, TypeError):
            return None  # the caller raises outside this handler: no chained secrets

    async def _exchange(self, request: HttpRequest) -> HttpResponse:
        where = f"{request.method} {_where(request.url)}"
        http_request = self._build(request)
        if http_request is None:
            raise ConfigurationError(f"{where}: request headers or form cannot be encoded")
        local_error = False
        try:
            with anyio.fail_after(self._policy.timeout):
                response = await self._client.send(
                    http_request, stream=True, follow_redirects=False
                )
                try:
                    return await self._read(response, where)
                finally:
                    await response.aclose()
        except AgentIdentityError:
            raise
        except (httpx2.TimeoutException, TimeoutError) as exc:
            raise RequestTimeout(f"{where} timed out ({type(exc).__name__})") from exc
        except httpx2.DecodingError as exc:
            raise InvalidResponse(f"{where}: response body cannot be decoded") from exc
        except httpx2.LocalProtocolError:
            # h11 quotes the offending header value in its message: do not chain it.
            local_error = True
        except httpx2.HTTPError as exc:
            raise TransportError(f"{where} failed ({type(exc).__name__})") from exc
        assert local_error
        raise TransportError(f"{where} failed: the request could not be encoded")

    async def _read(self, response: httpx2.Response, where: str) -> HttpResponse:
        status = response.status_code
        if 300 <= status < 400:
            raise InvalidResponse(
                f"{where}: unexpected redirect (HTTP {status}); redirects are never followed"
            )
        cap = self._policy.max_response_bytes
        declared = response.headers.get("content-length")
        if declared is not None:
            text = declared.strip()
            if not _DELTA_SECONDS.fullmatch(text):
                raise InvalidResponse(f"{where}: invalid Content-Length")
            if len(text) > 18 or int(text) > cap:
                raise InvalidResponse(f"{where}: response body larger than {cap} bytes")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > cap:
                raise InvalidResponse(f"{where}: response body larger than {cap} bytes")
            chunks.append(chunk)
        headers: dict[str, str] = {}
        for name, value in response.headers.multi_items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return HttpResponse(status, MappingProxyType(headers), b"".join(chunks))


def _is_retryable_error(exc: BaseException) -> bool:
    """Transport failures worth another attempt: timeouts, refused/reset connections,
    a server that hung up. Not policy refusals, not local encoding errors."""
    if not isinstance(exc, TransportError):
        return False
    cause = exc.__cause__
    return isinstance(
        cause,
        httpx2.TimeoutException | httpx2.NetworkError | httpx2.RemoteProtocolError | TimeoutError,
    )


def _last_outcome(state: RetryCallState) -> Any:
    """After the last attempt: return its response, or re-raise its exception."""
    assert state.outcome is not None
    return state.outcome.result()


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    reason = "error"
    if outcome is not None and not outcome.failed:
        result = outcome.result()
        if isinstance(result, HttpResponse):
            reason = f"HTTP {result.status_code}"
    elif outcome is not None:
        reason = type(outcome.exception()).__name__
    sleep = state.next_action.sleep if state.next_action is not None else 0.0
    _log.debug("retrying after %s in %.2f s (attempt %d)", reason, sleep, state.attempt_number)


def create_client(**kwargs: Any) -> httpx2.AsyncClient:
    """Return a new ``httpx2.AsyncClient`` with the SDK's defaults (no redirects followed)."""
    kwargs.setdefault("follow_redirects", False)
    kwargs.setdefault("timeout", 30.0)
    return httpx2.AsyncClient(**kwargs)


# -- an httpx2.Auth for calling protected resources --------------------------------------


class TokenSource(Protocol):
    """Where :class:`ResourceAuth` gets tokens; implemented by the identity layer."""

    async def token(self) -> AccessToken: ...

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken: ...

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken: ...

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken: ...


def _raw_path(url: httpx2.URL) -> str:
    return url.raw_path.decode("latin-1").partition("?")[0]


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _is_under(url: httpx2.URL, resource: str) -> bool:
    """Whether ``url`` is ``resource`` or below it: same scheme, host and port, and a path
    equal to the resource's or under it at a segment boundary.

    Paths are compared in two readings, and both must be under the resource (security
    item 23; RFC 3986 §6 and §5.2.4; issue 12 item 12):

    - the RFC 3986 §6.2.2 normal form (unreserved escapes decoded, dot segments removed);
    - the most lenient reading a server might apply: all escapes decoded (``%2e%2e``,
      ``%2f``, ``%5c``, double encoding), backslashes as slashes, ``;`` parameters
      dropped, then dot segments removed.

    So ``/v1/%2e%2e/admin``, ``/v1/..%2fadmin``, ``/v1%2f..%2fadmin`` and ``/v1/..;/admin``
    are refused for a resource ``/v1``, while an encoded slash that stays inside it
    (``/v1/projects/group%2Fname``) is not ambiguous and is allowed. A path with a stray
    ``%`` has no normal form and is refused.
    """
    try:
        base = httpx2.URL(resource)
    except (httpx2.InvalidURL, ValueError, TypeError):
        return False
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        return False
    path, prefix = _raw_path(url), _raw_path(base)
    strict, strict_prefix = normalized_path(path), normalized_path(prefix)
    if strict is None or strict_prefix is None:
        return False
    return _under(strict, strict_prefix) and _under(lenient_path(path), lenient_path(prefix))


def require_token_target(url: httpx2.URL, resource: str) -> None:
    """Security item 23: a token for ``resource`` goes only to URLs under it (see
    :func:`_is_under` for how encoded paths are read)."""
    if not _is_under(url, resource):
        raise InsecureURLError(
            f"a token for {resource} is never sent to "
            f"{url.scheme}://{url.host}{_raw_path(url)[:200]} (no token passthrough)"
        )


def bearer_challenge(response: httpx2.Response, *, prefer: str | None = None) -> Challenge | None:
    """The ``Bearer`` (or ``DPoP``) challenge of a response, if any; with ``prefer``
    (``"dpop"`` or ``"bearer"``) that scheme's challenge when the response has both."""
    values = response.headers.get_list("www-authenticate")
    found = [c for c in parse_www_authenticate(", ".join(values)) if c.scheme in ("bearer", "dpop")]
    for challenge in found:
        if challenge.scheme == prefer:
            return challenge
    return found[0] if found else None


async def present_token(request: httpx2.Request, token: AccessToken) -> None:
    """Put ``token`` on ``request``: ``Authorization: Bearer``, or for a DPoP-bound token
    ``Authorization: DPoP`` with a fresh proof (``ath``, the origin's nonce) in ``DPoP``
    (security items 22, 34, 36). A bearer token never goes with a DPoP header."""
    if not token.dpop_bound:
        request.headers["Authorization"] = token.authorization_header()
        if "dpop" in request.headers:
            del request.headers["dpop"]
        return
    headers = await token.request_headers(request.method, str(request.url))
    request.headers["Authorization"] = headers["Authorization"]
    request.headers["DPoP"] = headers["DPoP"]


def wants_new_nonce(response: httpx2.Response, token: AccessToken) -> bool:
    """Keep the resource's ``DPoP-Nonce`` (RFC 9449 §9) for its origin; ``True`` when the
    answer is ``401 use_dpop_nonce`` with a new nonce: the request may be retried once
    (security item 37)."""
    if token.dpop is None:
        return False
    fresh = token.dpop.remember_nonce(str(response.request.url), response.headers.get("dpop-nonce"))
    if not fresh or response.status_code != 401:
        return False
    challenge = bearer_challenge(response, prefer="dpop")
    return challenge is not None and challenge.error == "use_dpop_nonce"


class ResourceAuth(httpx2.Auth):
    """Authorizes requests to one protected resource with the user's narrow token.

    - the token goes only in the ``Authorization`` header (security item 22) and only to
      URLs under ``resource`` (security item 23: a request elsewhere is refused before it
      is sent);
    - ``401``: one refresh, then one retry (a refresh before any re-consent);
    - ``401`` with ``error="insufficient_user_authentication"`` (RFC 9470): a new
      authentication with the challenge's ``acr_values``/``max_age``, then a retry;
    - ``403`` with ``error="insufficient_scope"`` and a ``scope``: consent to the union of
      held and challenged scopes, then a retry (security item 29);
    at most ``max_step_ups`` elevations per request; then the last response is returned.
    """

    requires_request_body = True

    def __init__(self, source: TokenSource, *, resource: str, max_step_ups: int = 2) -> None:
        if max_step_ups < 0:
            raise ConfigurationError("max_step_ups must be >= 0")
        self._source = source
        self._resource = resource
        self._max_step_ups = max_step_ups

    def __repr__(self) -> str:
        return f"ResourceAuth(resource={self._resource!r})"

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise ConfigurationError("ResourceAuth is async: use it with an httpx2.AsyncClient")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        require_token_target(request.url, self._resource)
        token = await self._source.token()
        await present_token(request, token)
        response = yield request
        refreshed = False
        nonce_retried = False
        step_ups = 0
        while True:
            if wants_new_nonce(response, token) and not nonce_retried:
                nonce_retried = True  # one retry with the resource's nonce (item 37)
                await present_token(request, token)
                response = yield request
                continue
            challenge = bearer_challenge(response, prefer="dpop" if token.dpop_bound else "bearer")
            error = challenge.error if challenge is not None else None
            if error == "use_dpop_nonce":
                return  # a second nonce refusal: no refresh (the token is fine), no loop
            if (
                response.status_code == 401
                and error == "insufficient_user_authentication"
                and challenge is not None
                and step_ups < self._max_step_ups
            ):
                step_ups += 1
                acr = challenge.get("acr_values")
                token = await self._source.after_insufficient_authentication(
                    tuple(acr.split()) if acr else (), challenge.max_age
                )
            elif response.status_code == 401 and not refreshed:
                refreshed = True
                token = await self._source.after_unauthorized(token)
            elif (
                response.status_code == 403
                and error == "insufficient_scope"
                and challenge is not None
                and challenge.scopes
                and step_ups < self._max_step_ups
            ):
                step_ups += 1
                token = await self._source.after_insufficient_scope(challenge.scopes)
            else:
                return
            await present_token(request, token)
            response = yield request


class TokenAuth(httpx2.Auth):
    """Presents one given access token (an approval's, an exchanged one) to a resource.

    ``Authorization: Bearer``, or for a DPoP-bound token ``Authorization: DPoP`` with a
    fresh proof on every request and one retry with the resource's nonce after
    ``401 use_dpop_nonce`` (security items 34-37). Nothing else: no refresh, no step-up
    (a ``401`` or ``403`` is returned). With a ``resource`` (default: the token's), the
    token is only sent to URLs under it (security item 23)::

        token = approval.use(action)
        async with httpx2.AsyncClient(auth=TokenAuth(token)) as http:
            await http.post("https://payments.example/api/payments", json=...)
    """

    requires_request_body = True

    def __init__(self, token: AccessToken, *, resource: str | None = None) -> None:
        if not isinstance(token, AccessToken):
            raise ConfigurationError("TokenAuth takes an AccessToken")
        self._token = token
        self._resource = resource if resource is not None else token.resource

    def __repr__(self) -> str:
        return f"TokenAuth(resource={self._resource!r}, token_type={self._token.token_type!r})"

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise ConfigurationError("TokenAuth is async: use it with an httpx2.AsyncClient")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self._resource is not None:
            require_token_target(request.url, self._resource)
        await present_token(request, self._token)
        response = yield request
        if wants_new_nonce(response, self._token):
            await present_token(request, self._token)
            yield request
