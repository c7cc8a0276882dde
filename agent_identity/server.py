"""One authorization server, as one client sees it: the seam every flow goes through.

An :class:`AuthorizationServer` owns what a client knows about one authorization server
and performs every request to it:

- **metadata**: discovered (RFC 8414 §3, then OpenID Discovery; exact issuer, security
  items 8-9), given statically (``metadata=``) for servers without discovery, or taken
  from a :class:`~agent_identity.providers.ProviderProfile`;
- **client authentication**: ``none``, ``client_secret_basic``/``_post`` or
  ``private_key_jwt`` (security item 27; the assertion audience is the issuer, or the
  token endpoint URL for servers that accept only that, RFC 7523 §3);
- **endpoint calls**: authorization requests (PAR, RFC 9126), code redemption at the
  issuer recorded with the flow (security item 17), refresh (RFC 6749 §6, RFC 8707),
  client credentials, token exchange (RFC 8693, only where ``grant_types_supported``
  allows it), JWT bearer assertions (RFC 7523 §2.1, e.g. an identity assertion grant of
  cross-app access), device authorization (RFC 8628), CIBA (OpenID CIBA Core 1.0) and revocation
  (RFC 7009);
- **ID tokens** (OpenID Connect Core §3.1.3.7) against a JWK Set cache that is fetched
  again when a token names an unknown ``kid`` (key rotation), at most once per
  ``jwks_refresh_interval``;
- **honest tokens**: :meth:`AuthorizationServer.describe` labels an access token with the
  scopes the server says it carries (the response's ``scope``, else the readable JWT's
  ``scope``/``scp``, else the requested ones marked unverified) and its audience;
- **tolerance without weakness**: deviant token endpoint errors are mapped to the typed
  error they mean, keeping the raw code (:func:`map_token_error`);
- **DPoP** (RFC 9449, security items 34-37): every token-endpoint-like request (code
  redemption, refresh, client credentials, token exchange, device and CIBA polls, PAR)
  goes through :meth:`AuthorizationServer.send_token_request`, the one place where proofs
  for the server are made: a fresh proof per attempt, and one retry with the server's
  nonce after ``use_dpop_nonce`` (the request is built again, so a client assertion is
  never replayed). Nonces are kept per origin (:class:`~agent_identity.oauth.dpop.
  DPoPNonces`). :meth:`AuthorizationServer.check_binding` refuses a token that is not
  bound as asked (``token_type``, readable ``cnf.jkt``). DPoP is used when the client asks
  for it (``dpop=True`` or a key provider) or the metadata says the server binds every
  token (``dpop_bound_access_tokens``); keys are made per grant by the layers above;
- **RAR** (RFC 9396): ``authorization_details`` in authorization requests (front channel
  and PAR), token exchange and CIBA requests; :func:`granted_details` reads what a token
  carries.

Every endpoint learned from discovered metadata is sent as a server-supplied URL: the I/O
layer vets it against the SSRF policy at resolve and connect time unless its origin is the
configured issuer's (security item 2). Static metadata is configuration, so its endpoint
origins are trusted.

Layers above (:mod:`agent_identity.grant`, :mod:`agent_identity.approval`,
:mod:`agent_identity.mcp`, :mod:`agent_identity.client`) talk to a server only through
this class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import SecretStr

from agent_identity.clock import Clock, SystemClock
from agent_identity.errors import (
    ConfigurationError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidTokenError,
    MetadataError,
    OAuthError,
    ProtocolViolation,
    TokenBindingError,
    UnsupportedGrantType,
    oauth_error_from_response,
)
from agent_identity.models import AccessToken, DeviceAuthorization, ServerMetadata, TokenResponse
from agent_identity.oauth import authorize as authz
from agent_identity.oauth import discovery
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication, choose_client_auth
from agent_identity.oauth.dpop import DPoPKey, DPoPKeyProvider, DPoPNonces, DPoPSigner
from agent_identity.oauth.token import parse_token_response, token_request
from agent_identity.oauth.urls import canonical_resource_uri, check_endpoint_url
from agent_identity.providers._profile import STANDARD, ProviderProfile

if TYPE_CHECKING:
    from agent_identity._http import HttpDriver, TransportPolicy
    from agent_identity.oauth.ciba import BackchannelAuthentication

__all__ = [
    "GRANT_SCOPES",
    "JWT_BEARER_GRANT",
    "TOKEN_EXCHANGE_GRANT",
    "AssertionAudience",
    "AuthorizationServer",
    "granted_details",
    "map_token_error",
]

logger = logging.getLogger("agent_identity")

AssertionAudience = Literal["issuer", "token_endpoint"]
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 7523 §2.1: a JWT used as an authorization grant.
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Scopes that govern the grant itself rather than a resource's API.
GRANT_SCOPES = frozenset({"openid", "offline_access"})

_DEAD_GRANT_STATUSES = frozenset({400, 401})


def map_token_error(
    response: HttpResponse,
    *,
    grant_type: str,
    aliases: Mapping[str, str] | None = None,
) -> Exception:
    """The typed error a token endpoint error response means (returned, not raised).

    Compliant responses (RFC 6749 §5.2: a JSON object with ``error``) become the
    :class:`~agent_identity.errors.OAuthError` subclass of their code; a provider code
    listed in ``aliases`` becomes the subclass of the standard code it stands for, and the
    raw code stays in ``error``. Deviant responses that real servers send are mapped to
    what they mean, with ``error_description`` saying what was received:

    - ``400``/``401`` without an error body to a refresh request: the refresh token is
      dead (``InvalidGrant``);
    - ``401`` or ``403`` without an error body to any other request: client
      authentication failed (``InvalidClient``);
    - ``403`` with an error code that is neither standard nor aliased: ``InvalidClient``
      (the raw code is kept in ``error``);
    - ``400`` without an error body to a token exchange: ``UnsupportedGrantType``;
    - any other ``400`` without an error body: ``InvalidRequest``.

    Anything else (a 5xx without a body, a body that is not an object) is
    :class:`~agent_identity.errors.InvalidResponse`.
    """
    status = response.status_code
    body: Mapping[str, Any] | None
    try:
        body = parse_json_object(response.content, what="token error response")
    except InvalidResponse:
        body = None
    code = body.get("error") if body is not None else None
    if isinstance(code, str) and code:
        assert body is not None
        description = body.get("error_description")
        uri = body.get("error_uri")
        desc = description if isinstance(description, str) else None
        link = uri if isinstance(uri, str) else None
        standard = (aliases or {}).get(code, code)
        kind = type(oauth_error_from_response(standard, desc, link, status))
        if kind is OAuthError and status == 403:
            kind = InvalidClient  # an unknown code on a 403: client authentication failed
        return kind(code, desc, link, status)  # the raw code stays in ``error``
    note = f"HTTP {status} without an OAuth error body"
    if grant_type == "refresh_token" and status in _DEAD_GRANT_STATUSES:
        return InvalidGrant("invalid_grant", note, None, status)
    if status in (401, 403):
        return InvalidClient("invalid_client", note, None, status)
    if status == 400 and grant_type == TOKEN_EXCHANGE_GRANT:
        return UnsupportedGrantType("unsupported_grant_type", note, None, status)
    if status == 400:
        return InvalidRequest("invalid_request", note, None, status)
    return InvalidResponse(f"token endpoint answered HTTP {status} without an OAuth error")


def salvage_refresh_token(response: HttpResponse) -> SecretStr | None:
    """The ``refresh_token`` of a successful (HTTP 200) token response that could not be
    parsed otherwise, so that a rotated refresh token is never lost to a malformed member
    elsewhere in the response. ``None`` when there is none."""
    if response.status_code != 200:
        return None
    try:
        body = parse_json_object(response.content, what="token response")
    except InvalidResponse:
        return None
    value = body.get("refresh_token")
    if not isinstance(value, str) or not value or not value.isascii() or not value.isprintable():
        return None
    return SecretStr(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Refreshed:
    """The outcome of a refresh request: the parsed response, or the error it raised
    together with a rotated refresh token salvaged from an unparsable success."""

    response: TokenResponse | None
    error: Exception | None = None
    salvaged_refresh_token: SecretStr | None = None


class AuthorizationServer:
    """One authorization server and this client's registration at it.

    :param issuer: the issuer identifier. Its metadata is discovered (RFC 8414, then OpenID
        Discovery) unless ``metadata`` or the profile's static metadata is given.
    :param client_id: the client id registered there.
    :param client_secret: for ``client_secret_basic`` / ``client_secret_post``.
    :param private_key: for ``private_key_jwt`` (preferred, security item 27).
    :param metadata: static metadata (a :class:`~agent_identity.models.ServerMetadata` or
        a mapping) for servers without discovery; its ``issuer`` must equal ``issuer``
        when both are given.
    :param profile: the provider's documented deviations (default: standards only).
    :param assertion_audience: the ``aud`` of ``private_key_jwt`` assertions: the issuer
        (the default, the current guidance, unless the profile says otherwise) or the token
        endpoint URL (RFC 7523 §3, OpenID Connect Core §9) for servers that accept only
        that.
    :param token_endpoint_auth_method: the method the client is registered with (RFC 7591
        §2), e.g. ``client_secret_post``; default: chosen from the credential and the
        metadata (``private_key_jwt`` for a key, ``client_secret_basic`` for a secret).
    :param http: the :class:`~agent_identity._http.HttpDriver` to send through (shared,
        not closed here).
    :param clock: the time source.
    :param leeway: clock leeway for ID token validation, seconds.
    :param use_par: push authorization requests: ``None`` when offered, ``True`` always,
        ``False`` never (unless the server requires PAR).
    :param jwks_refresh_interval: the JWK Set is fetched again for an unknown ``kid`` at
        most this often (seconds).
    :param lease_ttl: how long a refresh of a grant of this server holds the vault lease
        between heartbeats (seconds); ``lease_wait``: how long another refresh waits.
    :param learned: the issuer (and ``metadata``) were learned from another server (an MCP
        server's protected resource metadata), not configured: nothing about this server
        is trusted, every request to it is vetted as server-supplied (security item 2).
    :param redirect_uris: the redirect URIs the client is registered with, when known:
        :meth:`start_authorization` refuses any other before the user is sent anywhere (a
        loopback ``http`` URI matches on any port, RFC 8252 §7.3). ``None``: not checked
        here (the server checks).
    :param dpop: bind tokens to DPoP keys (RFC 9449): ``True`` (keys made in the process,
        :class:`~agent_identity.oauth.dpop.SoftwareDPoPKeys`) or a
        :class:`~agent_identity.oauth.dpop.DPoPKeyProvider` (e.g. keys in a KMS). With
        ``False`` DPoP is still used when the metadata says the server binds every token
        (``dpop_bound_access_tokens``); pass ``True`` when the client is registered with
        ``dpop_bound_access_tokens`` (RFC 9449 §5.2).
    """

    def __init__(
        self,
        issuer: str | None = None,
        *,
        client_id: str,
        client_secret: str | SecretStr | None = None,
        private_key: Any = None,
        metadata: ServerMetadata | Mapping[str, Any] | None = None,
        profile: ProviderProfile | None = None,
        assertion_audience: AssertionAudience | None = None,
        token_endpoint_auth_method: str | None = None,
        http: HttpDriver,
        clock: Clock | None = None,
        leeway: float = 60.0,
        use_par: bool | None = None,
        jwks_refresh_interval: float = 60.0,
        lease_ttl: float | None = None,
        lease_wait: float | None = None,
        learned: bool = False,
        redirect_uris: Sequence[str] | None = None,
        dpop: bool | DPoPKeyProvider = False,
    ) -> None:
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError("client_id is required")
        if client_secret is not None and private_key is not None:
            raise ConfigurationError("give either client_secret or private_key, not both")
        self.profile: ProviderProfile = profile if profile is not None else STANDARD
        if assertion_audience is None:
            assertion_audience = self.profile.assertion_audience  # type: ignore[assignment]
        if assertion_audience not in ("issuer", "token_endpoint"):
            raise ConfigurationError("assertion_audience must be 'issuer' or 'token_endpoint'")
        static = _static_metadata(metadata, self.profile)
        if issuer is None:
            if static is not None:
                issuer = static.issuer
            elif self.profile.issuer:
                issuer = self.profile.issuer
            else:
                raise ConfigurationError("an issuer (or static metadata) is required")
        if static is not None and static.issuer != issuer:
            raise ConfigurationError(
                "the static metadata's issuer differs from the configured issuer"
            )
        policy = http.policy
        check_endpoint_url(
            issuer, allow_insecure_loopback=policy.allow_insecure_loopback, what="issuer"
        )
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = (
            SecretStr(client_secret) if isinstance(client_secret, str) else client_secret
        )
        self._private_key = private_key
        self._assertion_audience: AssertionAudience = assertion_audience
        self._auth_method = token_endpoint_auth_method
        #: ``False`` once the server is known to bind the refresh token it issues to the
        #: scope or resource a token request narrowed to (RFC 6749 §6 says a rotated
        #: refresh token keeps the original scope; RFC 8707 §2.2 binds it to the
        #: authorization request's resources): code redemption and refreshes then ask for
        #: the whole grant, and tokens are labelled with what they carry.
        self.narrow_refresh = self.profile.narrow_refresh
        self._http = http
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.leeway = leeway
        self._use_par = use_par
        self._jwks_interval = jwks_refresh_interval
        from agent_identity.vault.vault import DEFAULT_LEASE_TTL

        # A refresh holds a short lease renewed by a heartbeat (a dead holder is overtaken
        # within lease_ttl); others wait for a live holder's request plus that bound.
        self.lease_ttl = lease_ttl if lease_ttl is not None else DEFAULT_LEASE_TTL
        self.lease_wait = lease_wait if lease_wait is not None else self.lease_ttl + policy.timeout
        self._metadata: ServerMetadata | None = None
        self._client_auth: ClientAuthentication | None = None
        self._jwks: Any = None
        self._jwks_forced_at: float | None = None
        self._jwks_lock = anyio.Lock(fast_acquire=True)
        self._discover_lock = anyio.Lock(fast_acquire=True)
        self.pending = authz.PendingAuthorizations()
        self.learned = learned
        if isinstance(redirect_uris, str):
            raise ConfigurationError("redirect_uris must be a sequence of URIs, not one string")
        self.redirect_uris: tuple[str, ...] | None = (
            None if redirect_uris is None else tuple(redirect_uris)
        )
        if not isinstance(dpop, bool) and not isinstance(dpop, DPoPKeyProvider):
            raise ConfigurationError("dpop must be a bool or a DPoPKeyProvider")
        self._dpop_asked = dpop is not False
        self._dpop_keys: DPoPKeyProvider | None = None if isinstance(dpop, bool) else dpop
        #: The last ``DPoP-Nonce`` of each origin this client talked to (RFC 9449 §8, §9).
        self.dpop_nonces = DPoPNonces()
        if not learned:
            http.trust_origin(issuer)
        if static is not None:
            for name in discovery.ENDPOINT_FIELDS:
                value = getattr(static, name)
                if value is not None:
                    check_endpoint_url(
                        value, allow_insecure_loopback=policy.allow_insecure_loopback, what=name
                    )
                    if not learned:
                        http.trust_origin(value)  # configured by the developer: not learned
            self._set_metadata(static)

    def __repr__(self) -> str:
        return f"AuthorizationServer(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- metadata and client authentication ------------------------------------------------

    @property
    def http(self) -> HttpDriver:
        return self._http

    @property
    def policy(self) -> TransportPolicy:
        return self._http.policy

    @property
    def discovered(self) -> bool:
        return self._metadata is not None

    @property
    def metadata(self) -> ServerMetadata:
        """The server metadata (``await server.discover()`` first)."""
        if self._metadata is None:
            raise ConfigurationError("metadata not discovered yet: use 'async with' or discover()")
        return self._metadata

    @property
    def client_auth(self) -> ClientAuthentication:
        if self._client_auth is None:
            raise ConfigurationError("metadata not discovered yet: use 'async with' or discover()")
        return self._client_auth

    async def discover(self) -> ServerMetadata:
        """Fetch and validate the metadata (once; static metadata needs no request)."""
        if self._metadata is not None:
            return self._metadata
        async with self._discover_lock:
            if self._metadata is not None:
                return self._metadata
            policy = self.policy
            with anyio.fail_after(policy.timeout * 3):
                for url in discovery.metadata_urls(self.issuer):
                    response = await self.send(discovery.metadata_request(url))
                    found = discovery.parse_metadata(
                        response,
                        issuer=self.issuer,
                        allow_insecure_loopback=policy.allow_insecure_loopback,
                    )
                    if found is not None:
                        break
                else:
                    raise MetadataError(
                        f"no authorization server metadata found for issuer {self.issuer!r}"
                    )
            self._set_metadata(found)
            logger.debug("discovered metadata for %s", self.issuer)
            return found

    def _set_metadata(self, metadata: ServerMetadata) -> None:
        # documented facts the provider's document leaves out (a present member wins)
        metadata = self.profile.complete_metadata(metadata)
        self._client_auth = choose_client_auth(
            client_id=self.client_id,
            client_secret=self._client_secret,
            private_key=self._private_key,
            supported_methods=metadata.token_endpoint_auth_methods_supported,
            signing_algorithms=metadata.token_endpoint_auth_signing_alg_values_supported,
            assertion_audience=self._assertion_audience,
            token_endpoint=metadata.token_endpoint,
            method=self._auth_method,
        )
        self._metadata = metadata

    def supports_grant(self, grant_type: str) -> bool | None:
        """Whether the metadata lists ``grant_type``; ``None`` when it lists no grant types
        (RFC 8414 §2: then only the defaults are implied, but servers often omit it)."""
        listed = self.metadata.grant_types_supported
        if listed is None:
            return None
        return grant_type in listed

    def offline_access_listed(self) -> bool:
        supported = self.metadata.scopes_supported
        return (
            self.profile.offline_access_scope
            and supported is not None
            and "offline_access" in supported
        )

    def openid_listed(self) -> bool:
        supported = self.metadata.scopes_supported
        return supported is not None and "openid" in supported

    def par_wanted(self) -> bool:
        metadata = self.metadata
        if metadata.pushed_authorization_request_endpoint is None:
            if metadata.require_pushed_authorization_requests or self._use_par:
                raise MetadataError("PAR is required but the server has no PAR endpoint")
            return False
        if metadata.require_pushed_authorization_requests:
            return True
        return self._use_par is not False

    # -- DPoP (RFC 9449) -----------------------------------------------------------------

    @property
    def uses_dpop(self) -> bool:
        """Whether new grants and tokens are bound to DPoP keys: asked for by the client,
        or announced by the metadata of a configured server (``dpop_bound_access_tokens``).
        A server learned from another (MCP) uses DPoP only when its caller asks
        (``dpop=``): the caller must then present tokens with proofs."""
        if self._dpop_asked:
            return True
        return (
            not self.learned
            and self._metadata is not None
            and self._metadata.dpop_bound_access_tokens
        )

    @property
    def dpop_keys(self) -> DPoPKeyProvider:
        """The DPoP key provider (default: keys generated in the process)."""
        if self._dpop_keys is None:
            from agent_identity.oauth.dpop import SoftwareDPoPKeys

            self._dpop_keys = SoftwareDPoPKeys()
        return self._dpop_keys

    def dpop_signer(self, key: DPoPKey) -> DPoPSigner:
        """A signer for ``key`` sharing this server's nonce cache and clock (the key is
        checked: asymmetric algorithm, public JWK only; security item 34)."""
        return DPoPSigner(key, nonces=self.dpop_nonces, time=self.clock.time)

    async def new_dpop_signer(self) -> DPoPSigner:
        """A new key (for a new grant, an approval, the agent's own tokens), in the
        algorithm the server lists first among ES256, EdDSA, RS256 (provider's order)."""
        supported = self.metadata.dpop_signing_alg_values_supported
        return self.dpop_signer(await self.dpop_keys.generate(supported))

    def load_dpop_signer(self, exported: Mapping[str, Any]) -> DPoPSigner:
        """The signer of a key stored with a grant (what :meth:`DPoPKey.export` returned)."""
        return self.dpop_signer(self.dpop_keys.load(exported))

    def check_binding(self, response: TokenResponse, dpop: DPoPSigner | None) -> None:
        """Refuse a token that is not bound as the request asked (security item 36):
        :class:`~agent_identity.errors.TokenBindingError`."""
        bound = response.token_type.lower() == "dpop"
        if dpop is None:
            if bound:
                raise TokenBindingError(
                    "the authorization server issued a DPoP-bound token to a request "
                    "without a DPoP proof",
                    reason="token_type",
                )
            return
        if not bound:
            raise TokenBindingError(
                "the request carried a DPoP proof but the authorization server issued a "
                f"{response.token_type!r} token; it is refused (RFC 9449 §5)",
                reason="token_type",
            )
        claims = _readable_claims(response.access_token)
        if claims is not None:
            cnf = claims.get("cnf")
            jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
            if jkt != dpop.jkt:
                raise TokenBindingError(
                    "the issued token's cnf.jkt does not name this client's DPoP key "
                    "(RFC 9449 §6.1)",
                    reason="cnf",
                )

    def _require(self, value: str | None, name: str) -> str:
        if value is None:
            raise MetadataError(f"the authorization server metadata has no {name}")
        return value

    # -- sending -------------------------------------------------------------------------

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send a request to one of this server's endpoints (vetted as server-supplied
        unless its origin is configured; see the module docstring)."""
        if not request.server_supplied:
            request = dataclasses.replace(request, server_supplied=True)
        return await self._http.send(request)

    def resource_param(self, resource: str | None) -> str | None:
        return resource if self.profile.resource_indicators else None

    def wire_scopes(
        self, resource: str | None, scopes: Sequence[str]
    ) -> tuple[str | None, tuple[str, ...]]:
        """The ``(resource, scopes)`` to send for a need, after the profile's mapping."""
        mapped_resource, mapped = self.profile.scopes_for(resource, scopes)
        return self.resource_param(mapped_resource), mapped

    def _form_scopes(self, form: dict[str, Any], scopes: Sequence[str]) -> None:
        if scopes:
            form[self.profile.scope_parameter] = self.profile.join_scopes(scopes)

    async def send_token_request(
        self, build: Callable[[], HttpRequest], *, dpop: DPoPSigner | None
    ) -> HttpResponse:
        """Send a request to a token-endpoint-like endpoint (token, PAR): the ONE place
        where DPoP proofs for this server are made (security items 34, 35, 37).

        With ``dpop`` each attempt gets a fresh proof (``htm``, ``htu``, ``iat``, a new
        ``jti``, the origin's nonce). A ``DPoP-Nonce`` in any answer is kept for the
        origin; a ``400``/``401`` ``use_dpop_nonce`` with a new nonce is retried once, with
        the request built again by ``build`` (a fresh client assertion: never a replay).
        """
        request = build()
        if dpop is None:
            return await self.send(request)
        retried = False
        while True:
            proof = await dpop.proof(request.method, request.url)
            response = await self.send(
                dataclasses.replace(request, headers={**request.headers, "DPoP": proof})
            )
            fresh = dpop.remember_nonce(request.url, response.header("dpop-nonce"))
            if (
                not retried
                and fresh
                and response.status_code in (400, 401)
                and _error_code(self.normalize(response)) == "use_dpop_nonce"
            ):
                retried = True
                logger.debug("retrying a request to %s with its DPoP nonce", self.issuer)
                request = build()
                continue
            return response

    def token_request(self, form: Mapping[str, Any], *, endpoint: str | None = None) -> HttpRequest:
        """A token endpoint request carrying ``form`` and the client's authentication."""
        metadata = self.metadata
        target = endpoint or self._require(metadata.token_endpoint, "token_endpoint")
        request = token_request(
            target, form, self.client_auth, issuer=metadata.issuer, now=self.clock.time()
        )
        return self.profile.prepare_token_request(request)

    async def token_call(
        self, form: Mapping[str, Any], *, dpop: DPoPSigner | None = None
    ) -> TokenResponse:
        """POST ``form`` to the token endpoint; the parsed response (bound as asked) or
        the mapped error."""
        response = await self.send_token_request(lambda: self.token_request(form), dpop=dpop)
        parsed = self.parse_token(response, grant_type=str(form.get("grant_type", "")))
        self.check_binding(parsed, dpop)
        return parsed

    def in_own_terms(self, response: TokenResponse, resource: str | None) -> TokenResponse:
        """``response`` as the caller asked for it: its ``scope`` mapped back to the
        caller's scope names (the profile's ``granted_scopes``, the inverse of
        ``scopes_for``), and marked opaque when the provider documents access tokens as
        opaque to clients (then never read for scopes or audience)."""
        profile = self.profile
        if response.scope is not None:
            mapped = profile.granted_scopes(resource, response.scope)
            if mapped != response.scope:
                response = response.model_copy(update={"scope": mapped})
        return response.marked_opaque() if profile.opaque_access_tokens else response

    def normalize(self, response: HttpResponse) -> HttpResponse:
        return self.profile.normalize_token_response(response)

    def parse_token(self, response: HttpResponse, *, grant_type: str) -> TokenResponse:
        """Parse a token endpoint response through the profile; map errors."""
        response = self.normalize(response)
        if response.status_code != 200:
            raise map_token_error(
                response, grant_type=grant_type, aliases=self.profile.error_aliases
            )
        return parse_token_response(response)

    # -- the authorization code flow -------------------------------------------------------

    async def start_authorization(
        self,
        *,
        redirect_uri: str,
        scopes: Sequence[str],
        resources: Sequence[str] = (),
        prompt: str | None = None,
        login_hint: str | None = None,
        acr_values: Sequence[str] = (),
        max_age: int | None = None,
        extra: Mapping[str, str] | None = None,
        lifetime: float = authz.DEFAULT_FLOW_LIFETIME,
        register: bool = True,
        authorization_details: Sequence[Mapping[str, Any]] = (),
        dpop: DPoPSigner | None = None,
    ) -> tuple[authz.PendingAuthorization, str]:
        """Record a pending authorization (PKCE verifier, ``state``, ``nonce``, issuer:
        security items 15-17) and return it with the URL to show the user, pushed with
        PAR when the server offers it. ``extra`` parameters may not override what the
        SDK sets (``state``, PKCE, ``redirect_uri``, ``client_id``, ...).

        With ``register=False`` the pending authorization is not kept in this object's
        in-memory registry (the caller persists it, e.g. for a web consent completed by
        another worker).

        ``authorization_details`` (RFC 9396, validated JSON objects) are asked for in the
        request. With ``dpop`` the code is bound to that key: ``dpop_jkt`` (RFC 9449 §10)
        in the request, and a proof on the PAR request (§10.1); the pending authorization
        records the thumbprint, and :meth:`redeem` needs a proof of the same key."""
        refusal = self.profile.authorization_code_refusal
        if refusal is not None:
            raise ConfigurationError(refusal)
        if self.redirect_uris is not None:
            from agent_identity.oauth.registration import redirect_uri_registered

            if not redirect_uri_registered(redirect_uri, self.redirect_uris):
                raise ConfigurationError(
                    f"the consent handler's redirect URI {_url_for_message(redirect_uri)} is not "
                    f"one of the redirect_uris registered at {self.issuer} "
                    f"({', '.join(self.redirect_uris) or 'none'}); no authorization request "
                    "was made"
                )
        metadata = self.metadata
        endpoint = self._require(metadata.authorization_endpoint, "authorization_endpoint")
        if len(resources) == 1:
            # the provider's names for the scopes of the one resource asked for
            # (Entra: ``https://graph.microsoft.com/User.Read``); several resources are
            # ambiguous, their scopes are sent as given
            _resource, mapped = self.profile.scopes_for(resources[0], scopes)
            requested, scopes = tuple(scopes), mapped
        else:
            requested = tuple(scopes)
        explicit = {
            "prompt": prompt,
            "login_hint": login_hint,
            "acr_values": acr_values or None,
            "max_age": max_age,
        }
        merged = {
            key: value
            for key, value in self.profile.authorization_params.items()
            if explicit.get(key) is None  # an explicit argument wins over the profile
        }
        for key, value in (extra or {}).items():
            authz.check_extra_parameter(key, value)
            merged[key] = value
        if self.profile.scope_parameter != "scope" and scopes:
            merged[self.profile.scope_parameter] = self.profile.join_scopes(scopes)
            wire_scopes: Sequence[str] = ()
        else:
            wire_scopes = scopes
        pending, params = authz.start_authorization(
            metadata,
            client_id=self.client_id,
            redirect_uri=redirect_uri,
            scopes=wire_scopes,
            resources=[r for r in resources if self.resource_param(r) is not None],
            now=self.clock.monotonic(),
            lifetime=lifetime,
            prompt=prompt,
            login_hint=login_hint,
            acr_values=acr_values,
            max_age=max_age,
            extra=merged,
            scope_separator=self.profile.scope_separator,
            authorization_details=authorization_details,
            dpop_jkt=dpop.jkt if dpop is not None else None,
        )
        if tuple(pending.scopes) != requested:
            pending = dataclasses.replace(pending, scopes=requested)
        if register:
            self.pending.add(pending, now=self.clock.monotonic())
        if self.par_wanted():
            response = await self.send_token_request(
                lambda: authz.par_request(
                    metadata, params, self.client_auth, now=self.clock.time()
                ),
                dpop=dpop,
            )
            request_uri, _ = authz.parse_par_response(response)
            url = authz.authorization_url(
                endpoint, {"client_id": self.client_id, "request_uri": request_uri}
            )
        else:
            url = authz.authorization_url(endpoint, params)
        return pending, url

    async def redeem(
        self,
        pending: authz.PendingAuthorization,
        code: SecretStr,
        *,
        resource: str | None,
        dpop: DPoPSigner | None = None,
    ) -> tuple[TokenResponse, dict[str, object]]:
        """Redeem an authorization ``code`` at the token endpoint recorded with the flow
        (security item 17) and validate the ID token, if any. A code bound to a DPoP key
        (``dpop_jkt``) is redeemed with a proof of that key."""
        if pending.issuer != self.issuer or pending.client_id != self.client_id:
            raise ConfigurationError("this authorization was started at another server")
        if pending.dpop_jkt is not None and (dpop is None or dpop.jkt != pending.dpop_jkt):
            raise ConfigurationError("this authorization is bound to another DPoP key")
        form: dict[str, Any] = {
            "grant_type": "authorization_code",
            "code": code.get_secret_value(),
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.code_verifier.get_secret_value(),
        }
        # Unnarrowed servers (see narrow_refresh) get no resource here: the tokens then
        # cover every resource of the authorization request.
        param = self.resource_param(resource) if self.narrow_refresh else None
        if param is not None:
            form["resource"] = param
        raw = await self.send_token_request(
            lambda: self.token_request(form, endpoint=pending.token_endpoint), dpop=dpop
        )
        response = self.parse_token(raw, grant_type="authorization_code")
        self.check_binding(response, dpop)
        response = self.in_own_terms(response, resource)
        claims: dict[str, object] = {}
        if response.id_token is not None:
            claims = await self.validate_id_token(
                response.id_token, nonce=pending.nonce, max_age=pending.max_age
            )
        return response, claims

    # -- other grants ----------------------------------------------------------------------

    async def refresh(
        self,
        refresh_token: SecretStr,
        *,
        scopes: Sequence[str],
        resource: str | None,
        dpop: DPoPSigner | None = None,
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> Refreshed:
        """Refresh (RFC 6749 §6) narrowed to ``scopes`` and ``resource`` (RFC 8707) and,
        when given, to ``authorization_details`` (RFC 9396 §6.2), with a proof of the
        grant's DPoP key when it has one.

        Returns a :class:`Refreshed`: errors are returned rather than raised so that the
        caller can first store a rotated refresh token salvaged from a malformed success
        (or from a token that is not bound as asked). Transport errors and cancellation
        still raise."""
        if self.narrow_refresh:
            wire_resource, wire_scopes = self.wire_scopes(resource, scopes)
        else:  # the whole grant: every scope and resource of its authorization request
            wire_resource, wire_scopes = None, ()
        form: dict[str, Any] = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.get_secret_value(),
        }
        self._form_scopes(form, wire_scopes)
        if wire_resource is not None:
            form["resource"] = wire_resource
        if authorization_details:
            form["authorization_details"] = _details_json(authorization_details)
        response = await self.send_token_request(lambda: self.token_request(form), dpop=dpop)
        try:
            parsed = self.parse_token(response, grant_type="refresh_token")
        except (OAuthError, ProtocolViolation) as exc:
            salvaged = None
            if isinstance(exc, ProtocolViolation):
                with contextlib.suppress(ProtocolViolation):  # a profile may refuse it
                    salvaged = salvage_refresh_token(self.normalize(response))
            return Refreshed(None, exc, salvaged)
        try:
            self.check_binding(parsed, dpop)
        except TokenBindingError as exc:
            return Refreshed(None, exc, parsed.refresh_token)
        return Refreshed(self.in_own_terms(parsed, resource))

    async def client_credentials(
        self,
        *,
        scopes: Sequence[str],
        resource: str | None,
        dpop: DPoPSigner | None = None,
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> TokenResponse:
        """A token for the client itself (OAuth 2.1 §4.2), bound to ``dpop`` if given."""
        wire_resource, wire_scopes = self.wire_scopes(resource, scopes)
        form: dict[str, Any] = {"grant_type": "client_credentials"}
        self._form_scopes(form, wire_scopes)
        if wire_resource is not None:
            form["resource"] = wire_resource
        if authorization_details:
            form["authorization_details"] = _details_json(authorization_details)
        return self.in_own_terms(await self.token_call(form, dpop=dpop), resource)

    async def jwt_bearer(
        self,
        assertion: SecretStr,
        *,
        scopes: Sequence[str] = (),
        resource: str | None = None,
        dpop: DPoPSigner | None = None,
    ) -> TokenResponse:
        """RFC 7523 §2.1: a JWT as an authorization grant (``assertion``), with the client's
        authentication, bound to ``dpop`` if given (RFC 9449). Refused before any request
        when the metadata lists grant types without
        ``urn:ietf:params:oauth:grant-type:jwt-bearer``."""
        if self.supports_grant(JWT_BEARER_GRANT) is False:
            raise UnsupportedGrantType(
                "unsupported_grant_type",
                "the authorization server does not list the JWT bearer grant (RFC 7523) in "
                "grant_types_supported; no request was sent",
            )
        if not isinstance(assertion, SecretStr) or not assertion.get_secret_value():
            raise ConfigurationError("the assertion must be a non-empty SecretStr")
        wire_resource, wire_scopes = self.wire_scopes(resource, scopes)
        form: dict[str, Any] = {
            "grant_type": JWT_BEARER_GRANT,
            "assertion": assertion.get_secret_value(),
        }
        self._form_scopes(form, wire_scopes)
        if wire_resource is not None:
            form["resource"] = wire_resource
        return await self.token_call(form, dpop=dpop)

    async def token_exchange(
        self,
        *,
        subject_token: SecretStr,
        subject_token_type: str,
        actor_token: SecretStr | None = None,
        actor_token_type: str | None = None,
        resource: str | None = None,
        audience: str | None = None,
        scopes: Sequence[str] = (),
        requested_token_type: str | None = None,
        grant_type: str = TOKEN_EXCHANGE_GRANT,
        dpop: DPoPSigner | None = None,
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> TokenResponse:
        """RFC 8693 token exchange (security items 31-32), the issued token bound to
        ``dpop`` if given and asking for ``authorization_details`` (RFC 9396 §6). Refused
        before any request when the metadata lists grant types without this one."""
        from agent_identity.oauth.exchange import (
            parse_token_exchange_response,
            token_exchange_request,
        )

        self.require_token_exchange()
        metadata = self.metadata
        details = _details_json(authorization_details) if authorization_details else None

        def build() -> HttpRequest:
            request = token_exchange_request(
                self._require(metadata.token_endpoint, "token_endpoint"),
                subject_token=subject_token,
                subject_token_type=subject_token_type,
                actor_token=actor_token,
                actor_token_type=actor_token_type,
                resource=self.resource_param(resource),
                audience=audience,
                scopes=scopes,
                requested_token_type=requested_token_type,
                client_auth=self.client_auth,
                issuer=metadata.issuer,
                now=self.clock.time(),
            )
            if details is not None:
                form = dict(request.form or {})
                form["authorization_details"] = details
                request = dataclasses.replace(request, form=form)
            return self.profile.prepare_token_request(request)

        response = self.normalize(await self.send_token_request(build, dpop=dpop))
        if response.status_code != 200:
            raise map_token_error(
                response, grant_type=TOKEN_EXCHANGE_GRANT, aliases=self.profile.error_aliases
            )
        parsed = parse_token_exchange_response(response)
        self.check_binding(parsed, dpop)
        return parsed

    def require_token_exchange(self) -> None:
        """Raise :class:`~agent_identity.errors.UnsupportedGrantType` when the metadata
        lists grant types without token exchange (RFC 8693): nothing is sent then."""
        if self.supports_grant(TOKEN_EXCHANGE_GRANT) is False:
            raise UnsupportedGrantType(
                "unsupported_grant_type",
                "the authorization server does not list token exchange (RFC 8693) in "
                "grant_types_supported; no request was sent",
            )

    async def revoke(self, token: SecretStr, *, token_type_hint: str | None = None) -> None:
        """RFC 7009 revocation: returns once the server confirmed (security item 28)."""
        from agent_identity.oauth.revocation import parse_revocation_response, revocation_request

        metadata = self.metadata
        hint: Any = token_type_hint
        request = revocation_request(
            metadata.revocation_endpoint,
            token=token,
            client_auth=self.client_auth,
            issuer=metadata.issuer,
            now=self.clock.time(),
            token_type_hint=hint,
        )
        with anyio.fail_after(self.policy.timeout * 4):
            response = await self.send(request)
        parse_revocation_response(response)

    # -- device flow (RFC 8628) ------------------------------------------------------------

    async def device_authorization(
        self,
        *,
        scopes: Sequence[str],
        resources: Sequence[str] = (),
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> DeviceAuthorization:
        """RFC 8628 §3.1 device authorization request, asking for ``authorization_details``
        (RFC 9396) when given."""
        from agent_identity.oauth.device import (
            device_authorization_request,
            parse_device_authorization,
        )

        metadata = self.metadata
        wanted = [r for r in resources if self.resource_param(r) is not None]
        request = device_authorization_request(
            metadata.device_authorization_endpoint,
            client_id=self.client_id,
            client_auth=self.client_auth,
            issuer=metadata.issuer,
            now=self.clock.time(),
            scopes=scopes,
            resources=wanted,
        )
        if authorization_details:
            form = dict(request.form or {})
            form["authorization_details"] = _details_json(authorization_details)
            request = dataclasses.replace(request, form=form)
        # the device authorization endpoint answers like the token endpoint (RFC 8628
        # §3.2), with the same provider deviations (GitHub: form-encoded by default)
        response = await self.send(self.profile.prepare_token_request(request))
        return parse_device_authorization(self.normalize(response))

    async def poll_device(
        self,
        authorization: DeviceAuthorization,
        handle: Callable[[HttpResponse], Any],
        *,
        dpop: DPoPSigner | None = None,
    ) -> Any:
        """One device-code token request; ``handle`` interprets the (normalized) answer.
        An issued token is checked to be bound as asked (``dpop``)."""
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": authorization.device_code.get_secret_value(),
        }
        response = await self.send_token_request(lambda: self.token_request(form), dpop=dpop)
        outcome = handle(self.normalize(response))
        if isinstance(outcome, TokenResponse):
            self.check_binding(outcome, dpop)
        return outcome

    # -- CIBA (OpenID CIBA Core 1.0) -------------------------------------------------------

    async def backchannel_authentication(self, **params: Any) -> BackchannelAuthentication:
        """Send a §7.1 authentication request; returns the §7.3 acknowledgement."""
        from agent_identity.oauth.ciba import (
            backchannel_authentication_request,
            parse_backchannel_response,
        )

        metadata = self.metadata
        request = backchannel_authentication_request(
            metadata.backchannel_authentication_endpoint,
            client_auth=self.client_auth,
            issuer=metadata.issuer,
            now=self.clock.time(),
            **params,
        )
        return parse_backchannel_response(await self.send(request))

    async def poll_ciba(
        self,
        auth_req_id: str,
        handle: Callable[[HttpResponse], Any],
        *,
        dpop: DPoPSigner | None = None,
    ) -> Any:
        """One CIBA token request (§10.1); ``handle`` interprets the answer. An issued
        token is checked to be bound as asked (``dpop``)."""
        form = {"grant_type": "urn:openid:params:grant-type:ciba", "auth_req_id": auth_req_id}
        response = await self.send_token_request(lambda: self.token_request(form), dpop=dpop)
        outcome = handle(self.normalize(response))
        if isinstance(outcome, TokenResponse):
            self.check_binding(outcome, dpop)
        return outcome

    # -- ID tokens -------------------------------------------------------------------------

    async def validate_id_token(
        self, id_token: SecretStr, *, nonce: str | None, max_age: int | None
    ) -> dict[str, object]:
        """Validate an ID token (OpenID Connect Core §3.1.3.7; security item 38) against
        the server's JWK Set, fetching it again once when the token names a key the cached
        set does not hold (the server rotated its keys)."""
        from agent_identity.oauth import jwt

        token = id_token.get_secret_value()
        jwks = await self._current_jwks()
        if not jwt.has_key_for(token, jwks):
            jwks = await self._current_jwks(stale=jwks)
        issuer = self.metadata.issuer
        if self.profile.id_token_issuer is not None:
            try:
                expected = self.profile.id_token_issuer(jwt.peek_claims(token))
            except InvalidTokenError:
                expected = None
            if expected is None:
                raise InvalidTokenError("the ID token's issuer does not fit the provider")
            issuer = expected
        claims = jwt.validate_id_token(
            token,
            jwks=jwks,
            issuer=issuer,
            client_id=self.client_id,
            nonce=nonce,
            now=self.clock.time(),
            leeway=self.leeway,
            max_age=max_age,
        )
        return dict(claims.raw)

    async def _current_jwks(self, *, stale: Any = None) -> Any:
        """The cached JWK Set; fetched when absent, or again when ``stale`` is the cached
        one (a token named a key it lacks) and no such forced fetch happened within the
        refresh interval (a stream of tokens with made-up key ids cannot make us hammer
        the server)."""
        async with self._jwks_lock:
            now = self.clock.monotonic()
            if self._jwks is not None and (
                stale is None
                or self._jwks is not stale
                or (
                    self._jwks_forced_at is not None
                    and now - self._jwks_forced_at < self._jwks_interval
                )
            ):
                return self._jwks
            if stale is not None:
                self._jwks_forced_at = now
            from agent_identity.oauth import jwt

            jwks_uri = self._require(self.metadata.jwks_uri, "jwks_uri")
            response = await self.send(HttpRequest("GET", jwks_uri, idempotent=True))
            if response.status_code != 200:
                raise InvalidResponse(f"jwks_uri answered HTTP {response.status_code}")
            self._jwks = jwt.parse_jwks(response.content)
            if stale is not None:
                logger.info("fetched the JWK Set of %s again (unknown key id)", self.issuer)
            return self._jwks

    # -- access tokens ---------------------------------------------------------------------

    def describe(
        self,
        response: TokenResponse,
        *,
        resource: str | None,
        requested: Sequence[str],
        dpop: DPoPSigner | None = None,
        facts: TokenFacts | None = None,
    ) -> AccessToken:
        """An :class:`~agent_identity.models.AccessToken` for ``response``, labelled with
        the scopes it carries (the response's ``scope``, else the readable JWT's
        ``scope``/``scp`` claim, else the requested ones with ``scopes_verified=False``)
        and, when the token is a readable JWT, its audience. Expiry from ``expires_in`` on
        the monotonic clock (security items 24, 39). A DPoP-bound token carries ``dpop``,
        the signer of its key; granted ``authorization_details`` are attached. ``facts``:
        :func:`token_facts` of ``response`` when the caller already has them."""
        received = self.clock.monotonic()
        scopes, verified, audience = facts or token_facts(response, requested)
        return AccessToken(
            value=response.access_token,
            token_type=response.token_type,
            issuer=self.issuer,
            resource=resource,
            scopes=scopes,
            expires_at=None if response.expires_in is None else received + response.expires_in,
            received_at=received,
            scopes_verified=verified,
            audience=audience,
            dpop=dpop if response.token_type.lower() == "dpop" else None,
            authorization_details=granted_details(response),
        )


def _url_for_message(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL for messages (no query, no userinfo)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path[:200]}"
    except ValueError:
        return "<unparsable URL>"


def _error_code(response: HttpResponse) -> str | None:
    try:
        body = parse_json_object(response.content, what="error response")
    except InvalidResponse:
        return None
    code = body.get("error")
    return code if isinstance(code, str) else None


def _details_json(details: Sequence[Mapping[str, Any]]) -> str:
    import json

    return json.dumps(
        [dict(d) for d in details], separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def granted_details(response: TokenResponse) -> tuple[dict[str, Any], ...] | None:
    """The RFC 9396 ``authorization_details`` an issued token carries: the token
    response's member (§7.1), else the claim of a readable JWT access token (§9.1), else
    ``None``. Read only to compare with what was asked for, never trusted for more."""
    from agent_identity.oauth.rar import parse_granted

    found = parse_granted(response.authorization_details)
    if found is not None:
        return found
    if response.access_token_opaque:
        return None
    claims = _readable_claims(response.access_token)
    return parse_granted(claims.get("authorization_details")) if claims is not None else None


#: ``(scopes, verified, audience)``: what :func:`token_facts` reads from a token response.
TokenFacts = tuple[tuple[str, ...], bool, tuple[str, ...] | None]


def token_facts(response: TokenResponse, requested: Sequence[str]) -> TokenFacts:
    """``(scopes, verified, audience)`` of an issued access token: the response's
    ``scope`` (RFC 6749 §5.1), else the ``scope``/``scp`` claim of a readable JWT access
    token (RFC 9068 §2.2.3), else ``requested`` unverified. The audience is the JWT's
    ``aud`` when readable, else ``None``. The token is only read, never trusted for more
    than labelling it (security item 24); a token the provider documents as opaque to
    clients (:attr:`TokenResponse.access_token_opaque`) is not read at all."""
    claims = None if response.access_token_opaque else _readable_claims(response.access_token)
    if response.scopes is not None:
        scopes, verified = tuple(response.scopes), True
    else:
        from_claims = _claim_scopes(claims) if claims is not None else None
        if from_claims is not None:
            scopes, verified = from_claims, True
        else:
            scopes, verified = tuple(requested), False
    audience: tuple[str, ...] | None = None
    if claims is not None:
        aud = claims.get("aud")
        if isinstance(aud, str):
            audience = (aud,)
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audience = tuple(aud)
    return scopes, verified, audience


def _readable_claims(token: SecretStr) -> dict[str, Any] | None:
    value = token.get_secret_value()
    if value.count(".") != 2 or len(value) > 16384:
        return None
    from agent_identity.oauth.jwt import peek_claims

    try:
        return peek_claims(value)
    except InvalidTokenError:
        return None


def _claim_scopes(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return tuple(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        return tuple(scp.split())
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return tuple(scp)
    return None


def audience_matches(audience: Sequence[str], resource: str) -> bool:
    """Whether a token audience names ``resource`` (compared in RFC 8707 canonical form)."""
    want = canonical_resource_uri(resource)
    for entry in audience:
        try:
            if canonical_resource_uri(entry) == want:
                return True
        except ConfigurationError:
            continue
    return False


def _static_metadata(
    metadata: ServerMetadata | Mapping[str, Any] | None, profile: ProviderProfile
) -> ServerMetadata | None:
    if metadata is None:
        return profile.metadata
    if isinstance(metadata, ServerMetadata):
        return metadata
    if isinstance(metadata, Mapping):
        from pydantic import ValidationError

        problem = None
        try:
            return ServerMetadata.model_validate(dict(metadata))
        except ValidationError as exc:
            problem = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        raise ConfigurationError(f"invalid static metadata members: {', '.join(problem)}")
    raise ConfigurationError("metadata must be a ServerMetadata or a mapping")
