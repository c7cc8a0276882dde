"""The I/O layer (with ``_netguard``, ``_guard`` and ``_resource_auth``, the modules that
import httpx2; ``mcp`` subclasses ``httpx2.Auth`` too).

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

import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import urlencode, urlsplit

import anyio

from agent_identity._limits import MAX_LIFETIME, parse_delta_seconds
from agent_identity._netguard import VET_CONNECT, Resolver, vetted_addresses
from agent_identity._version import __version__
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InsecureURLError,
    InvalidResponse,
    RequestTimeout,
    TransportError,
)
from agent_identity.models import AccessToken
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.urls import (
    check_endpoint_url,
    check_ssrf_literal,
    is_public_ip,
)

if TYPE_CHECKING:
    import httpx2
    from tenacity import RetryCallState

__all__ = [
    "HttpDriver",
    "Resolver",
    "TokenSource",
    "TransportPolicy",
    "create_client",
    "parse_retry_after",
    "resolve_host",
]

_log = logging.getLogger("agent_identity.http")

_Sleep = Callable[[float], Awaitable[None]]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_DEFAULT_PORTS = {"https": 443, "http": 80}
_DELTA_SECONDS = re.compile(r"[0-9]+")


_USER_AGENT = f"agent-identity/{__version__}"


def _httpx() -> Any:
    """httpx2, imported on first use: ``import agent_identity`` (and building requests)
    stays light, and the HTTP stack loads with the first client."""
    import httpx2

    return httpx2


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
    import email.utils  # only for an HTTP-date, which servers rarely send

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


def _what(request: HttpRequest) -> str:
    """``METHOD scheme://host/path`` of ``request``, for messages (made only when needed)."""
    return f"{request.method} {_where(request.url)}"


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # lower-case ASCII, IPv6 without brackets
    port: int
    #: The httpx2.URL that was checked; the request is sent to this very object.
    url: Any

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _target(url: str) -> _Target:
    """Parse ``url`` exactly as httpx2 will, and insist that our own parser agrees."""
    try:
        httpx = _httpx()
        parsed = httpx.URL(url)
        ours = urlsplit(url).hostname
    except (httpx.InvalidURL, ValueError):
        raise InsecureURLError(f"URL {_where(url)} cannot be parsed") from None
    host = parsed.raw_host.decode("ascii").lower()
    if ours is None or ours.lower() != host:
        raise InsecureURLError(f"URL {_where(url)} has an ambiguous host")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(parsed.scheme, 0)
    return _Target(scheme=parsed.scheme, host=host, port=port, url=parsed)


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
            from agent_identity._guard import GuardedBackend, GuardedTransport

            client = _httpx().AsyncClient(
                transport=GuardedTransport(GuardedBackend(self._resolve_now)),
                follow_redirects=False,
                timeout=policy.timeout,
                trust_env=False,
            )
        self._client = client
        # The headers every request starts from. The driver's own client never changes its
        # defaults, so they are merged once here and requests are built directly (httpx2's
        # build_request re-merges URL, headers and cookies each time); an injected client
        # keeps build_request, so its base URL, default headers and parameters apply.
        self._base_headers: dict[str, str] = (
            dict(client.headers.items()) if self._owns_client else {}
        )
        self._base_headers.update(
            {"accept": "application/json", "accept-encoding": "identity", "user-agent": _USER_AGENT}
        )
        self._timeout: dict[str, float | None] = _httpx().Timeout(policy.timeout).as_dict()

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
            return await self._attempt(request, vet, target)
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
        response: HttpResponse = await retrying(self._attempt, request, vet, target)
        return response

    async def _sleep_between(self, seconds: float) -> None:
        await self.sleep(seconds)

    async def _precheck(self, target: _Target, url: str) -> None:
        try:
            with anyio.fail_after(self._policy.timeout):
                await vetted_addresses(self._resolve, target.host, target.port, is_public_ip)
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

    async def _attempt(self, request: HttpRequest, vet: bool, target: _Target) -> HttpResponse:
        token = VET_CONNECT.set(vet)
        try:
            return await self._exchange(request, target)
        finally:
            VET_CONNECT.reset(token)

    def _build(self, request: HttpRequest, target: _Target) -> httpx2.Request | None:
        headers = dict(self._base_headers)
        headers.update({name.lower(): value for name, value in request.headers.items()})
        content: bytes | None = None
        if request.form is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
            content = urlencode(request.form_pairs()).encode("ascii")
        elif request.body is not None:
            content = request.body
        httpx = _httpx()
        try:
            if self._owns_client and not self._client.cookies:
                built: httpx2.Request = httpx.Request(
                    request.method,
                    target.url,
                    headers=headers,
                    content=content,
                    extensions={"timeout": dict(self._timeout)},
                )
                return built
            return self._client.build_request(
                request.method,
                target.url,
                headers=headers,
                content=content,
                timeout=self._policy.timeout,
            )
        except (httpx.InvalidURL, httpx.HTTPError, ValueError, TypeError):
            return None  # the caller raises outside this handler: no chained secrets

    async def _exchange(self, request: HttpRequest, target: _Target) -> HttpResponse:
        http_request = self._build(request, target)
        if http_request is None:
            raise ConfigurationError(f"{_what(request)}: request headers or form cannot be encoded")
        local_error = False
        httpx = _httpx()
        try:
            # One deadline for the whole exchange, body included (a server trickling bytes
            # cannot hold the caller past the policy's timeout). A bare cancel scope: only
            # its own deadline can cancel it, so a caught cancellation means "timed out".
            with anyio.CancelScope(deadline=anyio.current_time() + self._policy.timeout) as scope:
                response = await self._client.send(
                    http_request, stream=True, follow_redirects=False
                )
                try:
                    return await self._read(response, request)
                finally:
                    await response.aclose()
            assert scope.cancelled_caught
            raise TimeoutError("the exchange outlived the policy's timeout")
        except AgentIdentityError:
            raise
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise RequestTimeout(f"{_what(request)} timed out ({type(exc).__name__})") from exc
        except httpx.DecodingError as exc:
            raise InvalidResponse(f"{_what(request)}: response body cannot be decoded") from exc
        except httpx.LocalProtocolError:
            # h11 quotes the offending header value in its message: do not chain it.
            local_error = True
        except httpx.HTTPError as exc:
            raise TransportError(f"{_what(request)} failed ({type(exc).__name__})") from exc
        assert local_error
        raise TransportError(f"{_what(request)} failed: the request could not be encoded")

    async def _read(self, response: httpx2.Response, request: HttpRequest) -> HttpResponse:
        status = response.status_code
        if 300 <= status < 400:
            raise InvalidResponse(
                f"{_what(request)}: unexpected redirect (HTTP {status}); "
                "redirects are never followed"
            )
        cap = self._policy.max_response_bytes
        declared = response.headers.get("content-length")
        if declared is not None:
            text = declared.strip()
            if not _DELTA_SECONDS.fullmatch(text):
                raise InvalidResponse(f"{_what(request)}: invalid Content-Length")
            if len(text) > 18 or int(text) > cap:
                raise InvalidResponse(f"{_what(request)}: response body larger than {cap} bytes")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > cap:
                raise InvalidResponse(f"{_what(request)}: response body larger than {cap} bytes")
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
    httpx = _httpx()
    return isinstance(
        cause,
        httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError | TimeoutError,
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
    client: httpx2.AsyncClient = _httpx().AsyncClient(**kwargs)
    return client


# -- what the identity layer gives ResourceAuth (agent_identity._resource_auth) ---------


class TokenSource(Protocol):
    """Where :class:`ResourceAuth` gets tokens; implemented by the identity layer."""

    async def token(self) -> AccessToken: ...

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken: ...

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken: ...

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken: ...
