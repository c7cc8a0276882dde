"""Client authentication at the token endpoint (sans-IO).

Implements the ``token_endpoint_auth_method`` values of RFC 7591 §2 / OpenID Connect
Core §9:

- ``client_secret_basic``: RFC 6749 §2.3.1. The client id and secret are each
  ``application/x-www-form-urlencoded`` BEFORE being joined with ``:`` and base64-encoded
  into ``Authorization: Basic``; skipping that step breaks every secret containing
  ``:``, ``%``, ``+``, spaces or non-ASCII characters.
- ``client_secret_post``: RFC 6749 §2.3.1, credentials in the form body.
- ``private_key_jwt``: RFC 7523 §2.2 and §3 with OpenID Connect Core §9. The assertion's
  ``aud`` is the authorization server's ISSUER identifier as a single string, never the
  token endpoint and never an array (security item 27; OpenID Connect Core errata 2025
  and the RFC 7523 update that closed the audience-injection attack).
- ``none``: a public client identifies itself with ``client_id`` only (RFC 6749 §2.1).

Security item 27 prefers ``private_key_jwt`` whenever a key is configured; see
:func:`choose_client_auth`. No object here shows a secret or a key in its ``repr``.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol, runtime_checkable
from urllib.parse import quote_plus

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey, import_key
from pydantic import SecretStr

from agent_identity.errors import ConfigurationError
from agent_identity.oauth.jwt import _FOREIGN_ERRORS, _registry

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

#: RFC 7523 §2.2 ``client_assertion_type`` for a JWT bearer client assertion.
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Explicit type for client assertions (draft-ietf-oauth-rfc7523bis), used only on request.
_EXPLICIT_TYP: Final = "client-authentication+jwt"

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_ALGORITHMS: Final = {"Ed25519": ("EdDSA", "Ed25519"), "Ed448": ("EdDSA", "Ed448")}
_MIN_RSA_BITS: Final = 2048


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
        form: dict[str, str],
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


def _require_client_id(client_id: object) -> None:
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError("client_id must be a non-empty string")


def _require_secret(secret: object) -> None:
    if not isinstance(secret, SecretStr) or not secret.get_secret_value():
        raise ConfigurationError("client_secret must be a non-empty SecretStr")


@dataclass(frozen=True, slots=True, repr=False)
class NoClientAuth:
    """A public client (``none``): sends only ``client_id`` (RFC 6749 §2.1, §3.2.1)."""

    client_id: str
    method: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        _require_client_id(self.client_id)

    def apply(
        self,
        form: dict[str, str],
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

    def __post_init__(self) -> None:
        _require_client_id(self.client_id)
        _require_secret(self.client_secret)

    def apply(
        self,
        form: dict[str, str],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        user_pass = (
            f"{_form_urlencode(self.client_id)}:"
            f"{_form_urlencode(self.client_secret.get_secret_value())}"
        )
        encoded = base64.b64encode(user_pass.encode("ascii")).decode("ascii")
        headers["Authorization"] = f"Basic {encoded}"

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
        _require_client_id(self.client_id)
        _require_secret(self.client_secret)

    def apply(
        self,
        form: dict[str, str],
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


PrivateKeyInput = Key | Mapping[str, Any] | bytes | str
"""A signing key: a joserfc key, a private JWK (dict) or an unencrypted PEM private key."""


def _load_private_key(key: PrivateKeyInput) -> Key:
    """Normalise ``key`` to a private asymmetric joserfc key. Errors never echo the key."""
    loaded: Key
    if isinstance(key, RSAKey | ECKey | OKPKey | OctKey):
        loaded = key
    elif isinstance(key, Mapping):
        if key.get("kty") == "oct":
            raise ConfigurationError("symmetric keys cannot be used for private_key_jwt")
        try:
            loaded = import_key(dict(key))
        except _FOREIGN_ERRORS:
            raise ConfigurationError("private_key is not a valid JWK") from None
    elif isinstance(key, bytes | str):
        data = key.encode("utf-8") if isinstance(key, str) else key
        try:
            native = load_pem_private_key(data, password=None)
        except (ValueError, TypeError, *_FOREIGN_ERRORS):
            raise ConfigurationError("private_key is not an unencrypted PEM private key") from None
        kty: Literal["RSA", "EC", "OKP"]
        if isinstance(native, rsa.RSAPrivateKey):
            kty = "RSA"
        elif isinstance(native, ec.EllipticCurvePrivateKey):
            kty = "EC"
        elif isinstance(native, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            kty = "OKP"
        else:
            raise ConfigurationError("unsupported PEM private key type for private_key_jwt")
        try:
            loaded = import_key(data, kty)
        except _FOREIGN_ERRORS:
            raise ConfigurationError("private_key could not be imported") from None
    else:
        raise ConfigurationError("private_key must be a joserfc key, a JWK dict or PEM")
    if isinstance(loaded, OctKey):
        raise ConfigurationError("symmetric keys cannot be used for private_key_jwt")
    if not loaded.is_private:
        raise ConfigurationError("private_key_jwt needs a private key, got a public key")
    if isinstance(loaded, RSAKey) and loaded.raw_value.key_size < _MIN_RSA_BITS:
        raise ConfigurationError("RSA keys must be at least 2048 bits (RFC 7518 §3.3)")
    return loaded


def _algorithm_for(key: Key, requested: str | None) -> str:
    """Infer (or check) the JWS algorithm for ``key`` (RFC 7518 §3.1, RFC 8037 §3.1)."""
    if isinstance(key, RSAKey):
        alg = requested or "RS256"
        if alg not in _RSA_ALGORITHMS:
            raise ConfigurationError(f"algorithm {alg!r} does not fit an RSA key")
        return alg
    crv = key.get("crv")
    if isinstance(key, ECKey):
        expected = _EC_ALGORITHMS.get(str(crv))
        if expected is None:
            raise ConfigurationError(f"EC curve {crv!r} is not supported for private_key_jwt")
        if requested not in (None, expected):
            raise ConfigurationError(f"algorithm {requested!r} does not fit a {crv} key")
        return expected
    names = _OKP_ALGORITHMS.get(str(crv))
    if names is None:
        raise ConfigurationError(f"OKP curve {crv!r} is not supported for private_key_jwt")
    if requested is None:
        return names[0]
    if requested not in names:
        raise ConfigurationError(f"algorithm {requested!r} does not fit an {crv} key")
    return requested


@dataclass(frozen=True, slots=True, repr=False, eq=False, init=False)
class PrivateKeyJWT:
    """``private_key_jwt`` (RFC 7523 §2.2, §3; OpenID Connect Core §9).

    Each :meth:`apply` signs a fresh assertion with ``iss`` = ``sub`` = ``client_id``,
    ``aud`` = the issuer (one string), a 256-bit random ``jti``, ``iat`` = ``now`` and
    ``exp`` = ``iat + lifetime``. The header carries ``kid`` when one is known (the
    ``kid`` argument, else the key's own) and ``typ: JWT``, or
    ``typ: client-authentication+jwt`` with ``explicit_typ=True``.

    :param key: a private RSA (>= 2048 bits), EC (P-256/384/521) or OKP (Ed25519/Ed448)
        key: a joserfc key, a private JWK dict or an unencrypted PEM. Symmetric keys are
        refused.
    :param algorithm: defaults to the key's ``alg`` member, else from the key type:
        RSA ``RS256`` (``PS256``... on request), P-256 ``ES256``, P-384 ``ES384``,
        P-521 ``ES512``, Ed25519/Ed448 ``EdDSA``.
    """

    client_id: str
    key: Key
    algorithm: str
    kid: str | None
    lifetime: int
    explicit_typ: bool
    method: ClassVar[str] = "private_key_jwt"

    def __init__(
        self,
        client_id: str,
        key: PrivateKeyInput,
        *,
        algorithm: str | None = None,
        kid: str | None = None,
        lifetime: int = 60,
        explicit_typ: bool = False,
    ) -> None:
        _require_client_id(client_id)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ConfigurationError("lifetime must be a positive number of seconds")
        loaded = _load_private_key(key)
        alg = _algorithm_for(loaded, algorithm or loaded.alg)
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ConfigurationError("kid must be a non-empty string")
        object.__setattr__(self, "client_id", client_id)
        object.__setattr__(self, "key", loaded)
        object.__setattr__(self, "algorithm", alg)
        object.__setattr__(self, "kid", kid if kid is not None else loaded.kid)
        object.__setattr__(self, "lifetime", lifetime)
        object.__setattr__(self, "explicit_typ", explicit_typ)

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJWT(client_id={self.client_id!r}, algorithm={self.algorithm!r}, "
            f"kid={self.kid!r})"
        )

    def assertion(self, *, issuer: str, now: float) -> str:
        """Sign a client assertion for ``issuer`` (RFC 7523 §3)."""
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("the issuer (assertion audience) is required")
        if not math.isfinite(now):
            raise ConfigurationError("now must be a finite epoch time")
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": issuer,
            "jti": secrets.token_urlsafe(32),
            "iat": iat,
            "exp": iat + self.lifetime,
        }
        header: dict[str, Any] = {
            "alg": self.algorithm,
            "typ": _EXPLICIT_TYP if self.explicit_typ else "JWT",
        }
        if self.kid is not None:
            header["kid"] = self.kid
        return jose_jwt.encode(header, claims, self.key, registry=_registry(self.algorithm))

    def apply(
        self,
        form: dict[str, str],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        # ``endpoint`` is deliberately unused: the audience is the issuer (security 27).
        form["client_id"] = self.client_id
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = self.assertion(issuer=issuer, now=now)

    def public_jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWK Set to register with the AS (``jwks`` in RFC 7591 §2)."""
        public = dict(self.key.as_dict(private=False))
        public.pop("kid", None)
        public["use"] = "sig"
        public["alg"] = self.algorithm
        if self.kid is not None:
            public["kid"] = self.kid
        return {"keys": [public]}


def choose_client_auth(
    *,
    client_id: str,
    client_secret: str | SecretStr | None = None,
    private_key: PrivateKeyInput | None = None,
    supported_methods: Sequence[str] | None,
    signing_algorithms: Sequence[str] | None = None,
) -> ClientAuthentication:
    """Pick the client authentication for the configured credential.

    ``supported_methods`` is the AS metadata ``token_endpoint_auth_methods_supported``
    (``None`` when absent; RFC 8414 §2 then implies ``client_secret_basic``).

    - a private key: ``private_key_jwt`` (security item 27), unless the AS lists methods
      without it. ``signing_algorithms`` (``token_endpoint_auth_signing_alg_values_supported``)
      picks ``PS256`` over ``RS256`` for an RSA key when only the former is listed.
    - a secret: ``client_secret_basic`` if listed or the list is absent, else
      ``client_secret_post`` if listed.
    - nothing: a public client (``none``), when listed or the list is absent.

    :raises ConfigurationError: both a secret and a key were given, or the AS does not
        support the method the configured credential needs.
    """
    _require_client_id(client_id)
    if isinstance(supported_methods, str) or isinstance(signing_algorithms, str):
        raise ConfigurationError("supported methods and algorithms are lists, not strings")
    if client_secret is not None and private_key is not None:
        raise ConfigurationError("configure either a client secret or a private key, not both")
    methods = None if supported_methods is None else frozenset(supported_methods)

    if private_key is not None:
        if methods is not None and "private_key_jwt" not in methods:
            raise ConfigurationError("the authorization server does not support private_key_jwt")
        algorithm: str | None = None
        if signing_algorithms is not None:
            algorithm = _pick_algorithm(_load_private_key(private_key), signing_algorithms)
        return PrivateKeyJWT(client_id, private_key, algorithm=algorithm)

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


def _pick_algorithm(key: Key, supported: Sequence[str]) -> str:
    if isinstance(key, RSAKey):
        for candidate in ("RS256", "PS256", "RS384", "PS384", "RS512", "PS512"):
            if candidate in supported:
                return candidate
        raise ConfigurationError("the authorization server supports no RSA signing algorithm")
    if isinstance(key, OKPKey):
        for candidate in _OKP_ALGORITHMS.get(str(key.get("crv")), ()):
            if candidate in supported:
                return candidate
    alg = _algorithm_for(key, None)
    if alg not in supported:
        raise ConfigurationError(f"the authorization server does not support {alg}")
    return alg


def generate_private_key(kind: Literal["EC", "RSA", "OKP"] = "EC") -> dict[str, Any]:
    """Generate a private signing JWK (EC P-256, RSA 3072 or OKP Ed25519) whose ``kid`` is
    its RFC 7638 thumbprint. For examples and tests; keep the result secret."""
    key: Key
    if kind == "EC":
        key = ECKey.generate_key("P-256")
    elif kind == "RSA":
        key = RSAKey.generate_key(3072)
    elif kind == "OKP":
        key = OKPKey.generate_key("Ed25519")
    else:
        raise ConfigurationError(f"unknown key kind {kind!r}")
    key.ensure_kid()
    return dict(key.as_dict(private=True))
