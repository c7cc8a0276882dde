"""``private_key_jwt`` client authentication (RFC 7523 §2.2, §3; OpenID Connect Core §9).

Split from :mod:`agent_identity.oauth.client_auth` so that joserfc and cryptography are
imported only by clients that authenticate with a key. The assertion's ``aud`` is the
authorization server's issuer identifier as one string (security item 27).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey, import_key

from agent_identity.errors import ConfigurationError
from agent_identity.oauth._ids import CLIENT_ASSERTION_TYPE, require_client_id
from agent_identity.oauth.jwt import FOREIGN_ERRORS, jws_registry

__all__ = ["PrivateKeyInput", "PrivateKeyJWT", "generate_private_key"]

#: Explicit type for client assertions (draft-ietf-oauth-rfc7523bis), used only on request.
_EXPLICIT_TYP: Final = "client-authentication+jwt"

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_ALGORITHMS: Final = {"Ed25519": ("EdDSA", "Ed25519"), "Ed448": ("EdDSA", "Ed448")}
_MIN_RSA_BITS: Final = 2048


PrivateKeyInput = Key | Mapping[str, Any] | bytes | str
"""A signing key: a joserfc key, a private JWK (dict) or an unencrypted PEM private key."""


def load_private_key(key: PrivateKeyInput) -> Key:
    """Normalise ``key`` to a private asymmetric joserfc key. Errors never echo the key."""
    loaded: Key
    if isinstance(key, RSAKey | ECKey | OKPKey | OctKey):
        loaded = key
    elif isinstance(key, Mapping):
        if key.get("kty") == "oct":
            raise ConfigurationError("symmetric keys cannot be used for private_key_jwt")
        try:
            loaded = import_key(dict(key))
        except FOREIGN_ERRORS:
            raise ConfigurationError("private_key is not a valid JWK") from None
    elif isinstance(key, bytes | str):
        data = key.encode("utf-8") if isinstance(key, str) else key
        try:
            native = load_pem_private_key(data, password=None)
        except (ValueError, TypeError, *FOREIGN_ERRORS):
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
        except FOREIGN_ERRORS:
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
    ``aud`` = the issuer (one string; or ``audience``), a 256-bit random ``jti``,
    ``iat`` = ``now`` and ``exp`` = ``iat + lifetime``. The header carries ``kid`` when
    one is known (the ``kid`` argument, else the key's own) and ``typ: JWT``, or
    ``typ: client-authentication+jwt`` with ``explicit_typ=True``.

    :param key: a private RSA (>= 2048 bits), EC (P-256/384/521) or OKP (Ed25519/Ed448)
        key: a joserfc key, a private JWK dict or an unencrypted PEM. Symmetric keys are
        refused.
    :param audience: the assertion's ``aud`` when it must not be the issuer (the token
        endpoint URL, RFC 7523 §3); default: the issuer passed to :meth:`apply`.
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
    audience: str | None
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
        audience: str | None = None,
    ) -> None:
        require_client_id(client_id)
        if audience is not None and (not isinstance(audience, str) or not audience):
            raise ConfigurationError("audience must be a non-empty string")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ConfigurationError("lifetime must be a positive number of seconds")
        loaded = load_private_key(key)
        alg = _algorithm_for(loaded, algorithm or loaded.alg)
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ConfigurationError("kid must be a non-empty string")
        object.__setattr__(self, "client_id", client_id)
        object.__setattr__(self, "key", loaded)
        object.__setattr__(self, "algorithm", alg)
        object.__setattr__(self, "kid", kid if kid is not None else loaded.kid)
        object.__setattr__(self, "lifetime", lifetime)
        object.__setattr__(self, "explicit_typ", explicit_typ)
        object.__setattr__(self, "audience", audience)

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
        return jose_jwt.encode(header, claims, self.key, registry=jws_registry(self.algorithm))

    def apply(
        self,
        form: dict[str, Any],
        headers: dict[str, str],
        *,
        issuer: str,
        endpoint: str,
        now: float,
    ) -> None:
        # ``endpoint`` is deliberately unused: the audience is the issuer (security 27),
        # or the configured token endpoint URL, whatever endpoint the request goes to.
        form["client_id"] = self.client_id
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = self.assertion(issuer=self.audience or issuer, now=now)

    def public_jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWK Set to register with the AS (``jwks`` in RFC 7591 §2)."""
        public = dict(self.key.as_dict(private=False))
        public.pop("kid", None)
        public["use"] = "sig"
        public["alg"] = self.algorithm
        if self.kid is not None:
            public["kid"] = self.kid
        return {"keys": [public]}


def pick_algorithm(key: Key, supported: Sequence[str]) -> str:
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
