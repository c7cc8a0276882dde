"""Client authentication at the token endpoint (sans-IO).

Implements the ``token_endpoint_auth_method`` values of RFC 7591 §2 / OpenID Connect
Core §9:

- ``client_secret_basic``: RFC 6749 §2.3.1. The client id and secret are each
  ``application/x-www-form-urlencoded`` BEFORE being joined with ``:`` and base64-encoded
  into ``Authorization: Basic``; skipping that step breaks every secret containing
  ``:``, ``%``, ``+``, spaces or non-ASCII characters.
- ``client_secret_post``: RFC 6749 §2.3.1, credentials in the form body.
- ``private_key_jwt``: RFC 7523 §2.2 and §3 with OpenID Connect Core §9. The assertion's
  ``aud`` is by default the authorization server's ISSUER identifier as a single string,
  never an array (security item 27; OpenID Connect Core errata 2025 and the RFC 7523
  update that closed the audience-injection attack). Many deployed servers accept only
  their token endpoint URL (RFC 7523 §3, OpenID Connect Core §9):
  ``assertion_audience="token_endpoint"`` sends that URL instead, still one string.
- ``none``: a public client identifies itself with ``client_id`` only (RFC 6749 §2.1).

Security item 27 prefers ``private_key_jwt`` whenever a key is configured; see
:func:`choose_client_auth`. No object here shows a secret or a key in its ``repr``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, runtime_checkable
from urllib.parse import quote_plus

from pydantic import SecretStr

from agent_identity._limits import sane_text
from agent_identity.errors import ConfigurationError
from agent_identity.oauth._ids import CLIENT_ASSERTION_TYPE, require_client_id

if TYPE_CHECKING:
    from agent_identity.oauth.private_key_jwt import (
        PrivateKeyInput,
        PrivateKeyJWT,
        generate_private_key,
    )

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "ClientAuthentication",
    "ClientSecretBasic",
    "ClientSecretPost",
    "NoClientAuth",
    "PrivateKeyJWT",
    "choose_client_auth",
    "generate_private_key",
]

@runtime_checkable
class ClientAuthentication(Protocol):
    """How a client authenticates to the token endpoint (and to the other endpoints that
    accept client authentication: revocation, CIBA, PAR, token exchange).

    ``method`` is the RFC 7591 ``token_endpoint_auth_method`` name. :meth:`apply` adds the
    credentials to the outgoing form and headers in place.
    """

    @property
    def client_id(self) -> str: ...

    @property
    def method(self) -> str: ...

    def apply(
        self,
        form: dict[str, Any],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        """Add this client's credentials to a request.

        :param issuer: the authorization server's issuer identifier (assertion ``aud``).
        :param endpoint: the URL the request goes to (informational).
        :param now: wall-clock time in epoch seconds (assertion ``iat``).
        """
        ...


def _require_secret(secret: object) -> None:
    if not isinstance(secret, SecretStr) or not secret.get_secret_value():
        raise ConfigurationError("client_secret must be a non-empty SecretStr")
    # never quoted: an encoding error of a lone surrogate would carry the whole secret
    sane_text(secret.get_secret_value(), "client_secret", error=ConfigurationError)


@dataclass(frozen=True, slots=True, repr=False)
class NoClientAuth:
    """A public client (``none``): sends only ``client_id`` (RFC 6749 §2.1, §3.2.1)."""

    client_id: str
    method: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        require_client_id(self.client_id)

    def apply(
        self,
        form: dict[str, Any],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        form["client_id"] = self.client_id

    def __repr__(self) -> str:
        return f"NoClientAuth(client_id={self.client_id!r})"


def _form_urlencode(value: str) -> str:
    # RFC 6749 §2.3.1 / Appendix B: application/x-www-form-urlencoded, UTF-8, space as '+'.
    return quote_plus(value, safe="", encoding="utf-8")


@dataclass(frozen=True, slots=True, repr=False)
class ClientSecretBasic:
    """``client_secret_basic``: HTTP Basic with form-urlencoded id and secret (RFC 6749
    §2.3.1). The form gets no credentials."""

    client_id: str
    client_secret: SecretStr
    method: ClassVar[str] = "client_secret_basic"
    # The header value, encoded once (the credentials never change).
    _header: SecretStr = field(init=False, compare=False, default=SecretStr(""))

    def __post_init__(self) -> None:
        require_client_id(self.client_id)
        _require_secret(self.client_secret)
        user_pass = (
            f"{_form_urlencode(self.client_id)}:"
            f"{_form_urlencode(self.client_secret.get_secret_value())}"
        )
        encoded = base64.b64encode(user_pass.encode("ascii")).decode("ascii")
        object.__setattr__(self, "_header", SecretStr(f"Basic {encoded}"))

    def apply(
        self,
        form: dict[str, Any],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        headers["Authorization"] = self._header.get_secret_value()

    def __repr__(self) -> str:
        return f"ClientSecretBasic(client_id={self.client_id!r}, client_secret='**********')"


@dataclass(frozen=True, slots=True, repr=False)
class ClientSecretPost:
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the form body
    (RFC 6749 §2.3.1; allowed, but Basic is the default the server must support)."""

    client_id: str
    client_secret: SecretStr
    method: ClassVar[str] = "client_secret_post"

    def __post_init__(self) -> None:
        require_client_id(self.client_id)
        _require_secret(self.client_secret)

    def apply(
        self,
        form: dict[str, Any],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        form["client_id"] = self.client_id
        form["client_secret"] = self.client_secret.get_secret_value()

    def __repr__(self) -> str:
        return f"ClientSecretPost(client_id={self.client_id!r}, client_secret='**********')"


def choose_client_auth(
    *,
    client_id: str,
    client_secret: str | SecretStr | None = None,
    private_key: PrivateKeyInput | None = None,
    supported_methods: Sequence[str] | None,
    signing_algorithms: Sequence[str] | None = None,
    assertion_audience: Literal["issuer", "token_endpoint"] = "issuer",
    token_endpoint: str | None = None,
    method: str | None = None,
) -> ClientAuthentication:
    """Pick the client authentication for the configured credential.

    ``method`` is the ``token_endpoint_auth_method`` the client was registered with
    (RFC 7591 §2), when it must be exactly that one: it must fit the credential, and the
    server must list it when it lists methods. Otherwise the method is chosen:

    ``supported_methods`` is the AS metadata ``token_endpoint_auth_methods_supported``
    (``None`` when absent; RFC 8414 §2 then implies ``client_secret_basic``).

    - a private key: ``private_key_jwt`` (security item 27), unless the AS lists methods
      without it; ``assertion_audience`` picks the assertion's ``aud`` (the issuer, or
      ``token_endpoint`` for servers that accept only their token endpoint URL).
      ``signing_algorithms`` (``token_endpoint_auth_signing_alg_values_supported``)
      picks ``PS256`` over ``RS256`` for an RSA key when only the former is listed.
    - a secret: ``client_secret_basic`` if listed or the list is absent, else
      ``client_secret_post`` if listed.
    - nothing: a public client (``none``), when listed or the list is absent.

    :raises ConfigurationError: both a secret and a key were given, or the AS does not
        support the method the configured credential needs.
    """
    require_client_id(client_id)
    if isinstance(supported_methods, str) or isinstance(signing_algorithms, str):
        raise ConfigurationError("supported methods and algorithms are lists, not strings")
    if client_secret is not None and private_key is not None:
        raise ConfigurationError("configure either a client secret or a private key, not both")
    methods = None if supported_methods is None else frozenset(supported_methods)
    if method is not None:
        _check_registered_method(method, client_secret, private_key, methods)
        if method in ("client_secret_basic", "client_secret_post"):
            assert client_secret is not None
            secret = (
                client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
            )
            if method == "client_secret_basic":
                return ClientSecretBasic(client_id, secret)
            return ClientSecretPost(client_id, secret)
        if method == "none":
            return NoClientAuth(client_id)

    if private_key is not None:
        if methods is not None and "private_key_jwt" not in methods:
            raise ConfigurationError("the authorization server does not support private_key_jwt")
        from agent_identity.oauth.private_key_jwt import (
            PrivateKeyJWT,
            load_private_key,
            pick_algorithm,
        )

        algorithm: str | None = None
        if signing_algorithms is not None:
            algorithm = pick_algorithm(load_private_key(private_key), signing_algorithms)
        audience: str | None = None
        if assertion_audience == "token_endpoint":
            if not token_endpoint:
                raise ConfigurationError(
                    "assertion_audience='token_endpoint' needs a token endpoint in the metadata"
                )
            audience = token_endpoint
        elif assertion_audience != "issuer":
            raise ConfigurationError("assertion_audience must be 'issuer' or 'token_endpoint'")
        return PrivateKeyJWT(client_id, private_key, algorithm=algorithm, audience=audience)

    if client_secret is not None:
        secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        if methods is None or "client_secret_basic" in methods:
            return ClientSecretBasic(client_id, secret)
        if "client_secret_post" in methods:
            return ClientSecretPost(client_id, secret)
        raise ConfigurationError(
            "the authorization server supports neither client_secret_basic nor client_secret_post"
        )

    if methods is None or "none" in methods:
        return NoClientAuth(client_id)
    raise ConfigurationError(
        "the authorization server does not accept public clients (no 'none' method); "
        "configure a client secret or a private key"
    )


_KNOWN_METHODS: Final = frozenset(
    {"none", "client_secret_basic", "client_secret_post", "private_key_jwt"}
)


def _check_registered_method(
    method: str,
    client_secret: object,
    private_key: object,
    methods: frozenset[str] | None,
) -> None:
    if method not in _KNOWN_METHODS:
        raise ConfigurationError(
            f"token_endpoint_auth_method {method!r} is not supported (use one of "
            f"{', '.join(sorted(_KNOWN_METHODS))})"
        )
    needs_secret = method in ("client_secret_basic", "client_secret_post")
    if needs_secret and client_secret is None:
        raise ConfigurationError(f"token_endpoint_auth_method {method!r} needs a client_secret")
    if method == "private_key_jwt" and private_key is None:
        raise ConfigurationError("token_endpoint_auth_method 'private_key_jwt' needs a private_key")
    if method == "none" and (client_secret is not None or private_key is not None):
        raise ConfigurationError(
            "token_endpoint_auth_method 'none' is a public client: give no secret or key"
        )
    if methods is not None and method not in methods:
        raise ConfigurationError(
            f"the authorization server does not list token_endpoint_auth_method {method!r}"
        )


def __getattr__(name: str) -> Any:
    # ``private_key_jwt`` needs joserfc and cryptography; load them only when used.
    if name in ("PrivateKeyJWT", "PrivateKeyInput", "generate_private_key"):
        from agent_identity.oauth import private_key_jwt

        return getattr(private_key_jwt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
