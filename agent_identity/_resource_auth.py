"""``httpx2.Auth`` for protected resources: the user's narrow token on every request to one
resource, refreshed on ``401``, stepped up on ``403 insufficient_scope`` (security items
22, 23, 29, 30), with DPoP proofs for bound tokens (items 34-37); and the helpers MCP
authorization shares (the token target check, challenge parsing, token presentation).

Split from :mod:`agent_identity._http` so that httpx2 loads with the first HTTP client,
not with ``import agent_identity``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx2

from agent_identity._http import TokenSource
from agent_identity.errors import ConfigurationError, InsecureURLError, StepUpLimitExceeded
from agent_identity.models import AccessToken
from agent_identity.oauth.urls import lenient_path, normalized_path
from agent_identity.oauth.www_authenticate import Challenge, parse_www_authenticate

__all__ = [
    "ResourceAuth",
    "StepUpBudget",
    "TokenAuth",
    "bearer_challenge",
    "present_token",
    "require_token_target",
    "wants_new_nonce",
]


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
      held and challenged scopes, then a retry (security item 29).

    Step-ups are counted per operation (method and path, without the query) across
    requests in a :class:`StepUpBudget`: after ``max_step_ups`` of them a further
    challenge for that operation raises
    :class:`~agent_identity.errors.StepUpLimitExceeded` instead of asking the user again
    (the response is discarded). Any other answer to the operation resets its count.
    ``step_ups`` shares the budget between auths (a user's grant keeps one per resource,
    so a new ``http_auth()`` for the same user and resource does not reset it).
    """

    requires_request_body = True

    def __init__(
        self,
        source: TokenSource,
        *,
        resource: str,
        max_step_ups: int = 2,
        step_ups: StepUpBudget | None = None,
    ) -> None:
        self._max_step_ups = check_max_step_ups(max_step_ups)
        self._source = source
        self._resource = resource
        self._step_ups = StepUpBudget() if step_ups is None else step_ups

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
        operation = f"{request.method} {_raw_path(request.url)[:200]}"
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
            reauthenticate = (
                response.status_code == 401
                and error == "insufficient_user_authentication"
                and challenge is not None
            )
            more_scope = (
                response.status_code == 403
                and error == "insufficient_scope"
                and challenge is not None
                and bool(challenge.scopes)
            )
            if challenge is not None and (reauthenticate or more_scope):
                self._step_ups.charge(
                    operation,
                    challenge,
                    response.status_code,
                    resource=self._resource,
                    limit=self._max_step_ups,
                )
            if reauthenticate and challenge is not None:
                acr = challenge.get("acr_values")
                token = await self._source.after_insufficient_authentication(
                    tuple(acr.split()) if acr else (), challenge.max_age
                )
            elif response.status_code == 401 and not refreshed:
                refreshed = True
                token = await self._source.after_unauthorized(token)
            elif more_scope and challenge is not None:
                token = await self._source.after_insufficient_scope(challenge.scopes)
            else:
                self._step_ups.reset(operation)  # answered otherwise: a new budget
                return
            await present_token(request, token)
            response = yield request


def check_max_step_ups(value: int) -> int:
    """``value`` if it is a usable step-up limit (an int >= 0, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError("max_step_ups must be an int >= 0")
    return value


class StepUpBudget:
    """Step-ups per operation across requests (security item 29), for
    :class:`ResourceAuth` and MCP authorization alike.

    :meth:`charge` counts one step-up for an operation, or raises
    :class:`~agent_identity.errors.StepUpLimitExceeded` once ``limit`` were made;
    :meth:`reset` starts the operation afresh (it was answered otherwise). At most
    :attr:`MAX_TRACKED_OPERATIONS` operations are remembered, the least recently charged
    forgotten first, whatever the operations a server makes us send.
    """

    #: How many operations' step-up counts are remembered (the oldest is forgotten first).
    MAX_TRACKED_OPERATIONS = 256

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def charge(
        self, operation: str, challenge: Challenge, status: int, *, resource: str, limit: int
    ) -> None:
        counts = self._counts
        done = counts.pop(operation, 0)
        if done >= limit:
            counts[operation] = done
            raise StepUpLimitExceeded(
                f"{resource} still refuses {operation!r} ({challenge.error}) after "
                f"{done} step-up(s); not asking again (max_step_ups={limit})",
                resource=resource,
                operation=operation,
                scopes=tuple(challenge.scopes),
                error=challenge.error,
                status_code=status,
                step_ups=done,
            )
        if len(counts) >= self.MAX_TRACKED_OPERATIONS:
            del counts[next(iter(counts))]
        counts[operation] = done + 1

    def reset(self, operation: str) -> None:
        self._counts.pop(operation, None)


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
