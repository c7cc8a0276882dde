"""JSON Web Token validation for the client side: ID tokens and JWK Sets (sans-IO).

Implements:

- RFC 7519 (JWT) §7.2 validation of a JWS-signed JWT, with the hardening of RFC 8725
  (JWT Best Current Practices): an explicit algorithm allow-list (§3.1), ``alg: none``
  always refused, no HMAC verification with a public key (the "algorithm confusion"
  attack, §2.1/§3.1), keys only from the caller's JWK Set (never ``jku``/``jwk``/``x5u``
  headers), no nested or encrypted tokens, explicit typing checks (§3.11) so that an
  RFC 9068 access token (``typ: at+jwt``) is never accepted as an ID token;
- OpenID Connect Core 1.0 §3.1.3.7 (ID Token Validation): exact ``iss``, ``aud``
  containing the client id, ``azp`` with several audiences, ``exp``, ``iat``, ``nonce``,
  ``auth_time`` with ``max_age``; §10.1 for HMAC-signed ID tokens of clients that hold a
  ``client_secret`` (opt-in only);
- RFC 7517 §5 JWK Set parsing: unknown key types and malformed keys are ignored; private
  key material in a server's JWK Set is refused.

Security items 38 and 39 of ``docs/security.md``. Time is never read here: ``now`` (epoch
seconds) is passed in by the caller. Error messages never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, Key, KeySet, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry, deserialize_compact
from pydantic import SecretStr

from agent_identity._limits import MAX_EPOCH, numeric_date, sane_text
from agent_identity.errors import ConfigurationError, InvalidResponse, InvalidTokenError
from agent_identity.oauth._json import parse_json_object

__all__ = [
    "DEFAULT_ALGORITHMS",
    "IdTokenClaims",
    "has_key_for",
    "parse_jwks",
    "peek_claims",
    "validate_id_token",
]

#: Asymmetric JWS algorithms accepted by default (RFC 8725 §3.1 allow-list).
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)

_HMAC_ALGORITHMS: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # alg -> min key octets

# alg -> (kty, allowed "crv" values or None when the key type has no curve)
_ASYMMETRIC_KEYS: Final[dict[str, tuple[str, frozenset[str] | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
}

_KEY_CLASSES: Final[dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}

# Members that only a private (or symmetric) JWK carries (RFC 7518 §6.2.2, §6.3.2, §6.4;
# RFC 8037 §2).
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# RFC 8725 §3.11: an ID token is either untyped or typed "JWT"; anything else (at+jwt,
# dpop+jwt, logout+jwt, ...) is a different kind of token and is refused.
_ACCEPTED_TYP: Final = frozenset({"jwt", "application/jwt"})

_MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3
_MAX_TOKEN_LENGTH: Final = 64 * 1024
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
FOREIGN_ERRORS: Final = (
    JoseError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnsupportedAlgorithm,
)


class _Registry(JWSRegistry):
    """A JWS registry that allows exactly the algorithms given, without warnings.

    joserfc warns on every use of ``EdDSA`` (deprecated by RFC 9864 in favour of
    ``Ed25519``); interoperable servers still use it, and the allow-list here is explicit.
    Unregistered header members are allowed (RFC 7515 §4: ignore what is not understood),
    except ``crit``, which callers check before verification.
    """

    max_header_length = 8 * 1024

    def get_alg(self, name: str) -> JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


def jws_registry(alg: str) -> JWSRegistry:
    return _Registry(algorithms=[alg], strict_check_header=False)


# --------------------------------------------------------------------------- claims


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    """The validated claims of an ID token (OpenID Connect Core §2).

    ``raw`` holds every claim (read-only), including ones not modelled here. ``repr``
    shows neither ``nonce`` nor ``raw`` (which may carry personal data).
    """

    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: float
    iat: float
    nonce: str | None = field(default=None, repr=False)
    auth_time: float | None = None
    acr: str | None = None
    amr: tuple[str, ...] | None = None
    azp: str | None = None
    raw: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )


# --------------------------------------------------------------------------- JWK Set


def parse_jwks(content: bytes | Mapping[str, Any]) -> KeySet:
    """Parse a server's JWK Set (RFC 7517 §5) into a :class:`joserfc.jwk.KeySet`.

    ``content`` is the raw body of the ``jwks_uri`` response or an already decoded object.
    Keys with an unknown ``kty``, missing or malformed members, or RSA moduli under 2048
    bits are ignored (RFC 7517 §5, RFC 7518 §3.3). A set that carries private or
    symmetric key material is refused: a server publishing its private keys (or a shared
    secret) cannot be trusted to sign anything.

    :raises InvalidResponse: not a JSON object with a ``keys`` array of objects, private
        key material present, or no usable key left.
    """
    if isinstance(content, bytes | bytearray | memoryview):
        document: Mapping[str, Any] = parse_json_object(bytes(content), what="JWK Set")
    elif isinstance(content, Mapping):
        document = content
    else:
        raise InvalidResponse("JWK Set must be bytes or a JSON object")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise InvalidResponse("JWK Set has no 'keys' array")
    keys: list[Key] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise InvalidResponse("JWK Set 'keys' member holds a non-object")
        if entry.get("kty") == "oct" or any(name in entry for name in _PRIVATE_JWK_MEMBERS):
            raise InvalidResponse("JWK Set contains private or symmetric key material")
        key = _import_public_jwk(entry)
        if key is not None:
            keys.append(key)
    if not keys:
        raise InvalidResponse("JWK Set contains no usable public key")
    return KeySet(keys)


def _import_public_jwk(entry: Mapping[str, Any]) -> Key | None:
    kty = entry.get("kty")
    if not isinstance(kty, str) or kty not in _KEY_CLASSES:
        return None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    if kty == "RSA" and _rsa_modulus_bits(entry.get("n")) < _MIN_RSA_BITS:
        return None  # RFC 7518 §3.3; checked before import, which would only warn
    try:
        return _KEY_CLASSES[kty].import_key(dict(entry))
    except FOREIGN_ERRORS:
        return None


def _rsa_modulus_bits(n: object) -> int:
    if not isinstance(n, str) or not _B64URL.fullmatch(n):
        return 0
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big").bit_length()


# --------------------------------------------------------------------------- compact JWS


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise InvalidTokenError(f"JWT {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidTokenError(f"JWT {what} is not base64url") from None


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    raw = _b64decode(segment, what)
    try:
        return parse_json_object(raw, what=f"JWT {what}")
    except InvalidResponse as exc:
        raise InvalidTokenError(str(exc)) from None


def _split(token: object) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise InvalidTokenError("JWT must be a string")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidTokenError("JWT is too large")
    parts = token.split(".")
    if len(parts) == 5:
        raise InvalidTokenError("encrypted JWTs (JWE) are not supported")
    if len(parts) != 3:
        raise InvalidTokenError("JWT is not in JWS compact serialization")
    return parts[0], parts[1], parts[2]


def peek_claims(token: str) -> dict[str, Any]:
    """Decode the payload of a JWS-compact JWT WITHOUT verifying anything.

    For display and diagnostics only (for example to show the RFC 8693 ``act`` delegation
    chain of an access token the client otherwise treats as opaque, RFC 9068 §6 /
    security item 24). The signature, issuer, audience and expiry are NOT checked, so the
    result must never drive an authorization decision.

    :raises InvalidTokenError: not a three-part JWS compact JWT whose header and payload
        are base64url-encoded JSON objects (duplicate members refused).
    """
    header, payload, _signature = _split(token)
    _json_segment(header, "header")
    return _json_segment(payload, "payload")


def _usable_for(key: Key, alg: str) -> bool:
    kty, curves = _ASYMMETRIC_KEYS[alg]
    if key.key_type != kty:
        return False
    if curves is not None and key.get("crv") not in curves:
        return False
    if key.get("use") not in (None, "sig"):
        return False
    if key.get("alg") not in (None, alg):
        return False
    ops = key.get("key_ops")
    return ops is None or "verify" in ops


def _verify(token: str, key: Key, alg: str) -> bytes | None:
    """Verify one candidate key with joserfc; ``None`` when it does not verify."""
    try:
        obj = deserialize_compact(token, key, registry=jws_registry(alg))
    except BadSignatureError:
        return None
    except FOREIGN_ERRORS:
        return None
    return obj.payload


def _secret_value(secret: str | SecretStr) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _candidate_keys(
    header: Mapping[str, Any],
    alg: str,
    *,
    jwks: KeySet,
    algorithms: Collection[str],
    client_secret: str | SecretStr | None,
) -> list[Key]:
    """Pick the keys that may verify a token with this header (RFC 8725 §3.1)."""
    if alg.lower() == "none":
        raise InvalidTokenError("unsecured JWT (alg 'none') refused")
    if alg in _HMAC_ALGORITHMS:
        # A public key set never verifies an HMAC: that is the algorithm-confusion attack.
        if client_secret is None:
            raise InvalidTokenError(f"HMAC algorithm {alg!r} refused: no client secret in use")
        if alg not in algorithms:
            raise InvalidTokenError(f"algorithm {alg!r} is not allowed")
        secret = _secret_value(client_secret).encode("utf-8")
        if len(secret) < _HMAC_ALGORITHMS[alg]:
            # RFC 7518 §3.2: the key must be at least as long as the hash output.
            raise InvalidTokenError(f"client secret is too short for {alg} (RFC 7518 §3.2)")
        return [OctKey.import_key(secret)]
    if alg not in algorithms or alg not in _ASYMMETRIC_KEYS:
        raise InvalidTokenError(f"algorithm {_short(alg)} is not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidTokenError("JWT header 'kid' is not a string")
    candidates = [k for k in jwks if _usable_for(k, alg) and (kid is None or k.kid == kid)]
    if not candidates:
        if kid is None:
            raise InvalidTokenError(f"no key in the JWK Set can verify {alg}")
        raise InvalidTokenError(f"no {alg} key in the JWK Set has kid {_short(kid)}")
    return candidates


def has_key_for(token: str, jwks: KeySet) -> bool:
    """Whether ``jwks`` holds a key that may verify ``token`` (by ``kid`` and algorithm).

    ``False`` tells the caller to fetch the JWK Set again: the server may have rotated its
    keys. A token that cannot be parsed, or uses an algorithm the set is irrelevant to
    (``none``, HMAC), returns ``True``: validation then reports the real problem."""
    try:
        header_b64, _payload, _signature = _split(token)
        header = _json_segment(header_b64, "header")
    except InvalidTokenError:
        return True
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or alg not in _ASYMMETRIC_KEYS:
        return True
    if kid is not None and not isinstance(kid, str):
        return True
    return any(_usable_for(k, alg) and (kid is None or k.kid == kid) for k in jwks)


def _check_header(header: Mapping[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise InvalidTokenError("JWT header has no 'alg'")
    if "crit" in header or "b64" in header:
        # RFC 7515 §4.1.11: we understand no critical extension; RFC 7797 unencoded
        # payloads have no place in a JWT.
        raise InvalidTokenError("JWT header carries unsupported extensions ('crit'/'b64')")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise InvalidTokenError(f"JWT 'typ' {_short(typ)} is not an ID token (RFC 8725 §3.11)")
    cty = header.get("cty")
    if cty is not None and (not isinstance(cty, str) or cty.lower() in _ACCEPTED_TYP):
        raise InvalidTokenError("nested JWTs are not supported")
    return alg


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- ID token


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    # The bounded-number rule (:mod:`._limits`): a NumericDate within 0..year 9999, so
    # that no later arithmetic or ``datetime`` conversion can overflow.
    value = claims.get(name)
    if value is None:
        return None
    return numeric_date(value, f"ID token {name!r} claim", error=InvalidTokenError)


def _required_number(claims: Mapping[str, Any], name: str) -> float:
    value = _number(claims, name)
    if value is None:
        raise InvalidTokenError(f"ID token has no {name!r} claim")
    return value


def _string(claims: Mapping[str, Any], name: str) -> str | None:
    # The text-sanity rule: these claims are compared, stored and shown verbatim.
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTokenError(f"ID token {name!r} claim is not a string")
    return sane_text(
        value, f"ID token {name!r} claim", max_length=4096, allow_empty=True,
        error=InvalidTokenError,
    )  # fmt: skip


def _required_string(claims: Mapping[str, Any], name: str) -> str:
    value = _string(claims, name)
    if not value:
        raise InvalidTokenError(f"ID token has no {name!r} claim")
    return value


def _string_list(value: object, name: str, *, allow_string: bool) -> tuple[str, ...]:
    if allow_string and isinstance(value, str):
        sane_text(value, f"ID token {name!r} claim", max_length=4096, error=InvalidTokenError)
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        for item in value:
            sane_text(item, f"ID token {name!r} claim", max_length=4096, error=InvalidTokenError)
        return tuple(value)
    raise InvalidTokenError(f"ID token {name!r} claim has the wrong type")


def validate_id_token(
    token: str,
    *,
    jwks: KeySet,
    issuer: str,
    client_id: str,
    nonce: str | None,
    now: float,
    leeway: float = 60.0,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
    max_age: int | None = None,
    client_secret: str | SecretStr | None = None,
) -> IdTokenClaims:
    """Validate an ID token as OpenID Connect Core §3.1.3.7 requires and return its claims.

    - signature: ``alg`` must be in ``algorithms`` (RFC 8725 §3.1); ``none`` is always
      refused; HMAC (``HS256``...) only when ``client_secret`` is given AND the HS
      algorithm is listed in ``algorithms`` (OIDC Core §10.1), never with a key from
      ``jwks``. With a ``kid`` header only the keys with that ``kid`` are tried; without
      one, every key of the right type is tried.
    - ``iss`` equals ``issuer`` exactly (no normalisation of case or trailing slash).
    - ``aud`` (string or array) contains ``client_id``; with several audiences ``azp`` must
      be present, and whenever present ``azp`` must equal ``client_id``.
    - ``exp`` is after ``now - leeway``; ``iat`` is present and not after ``now + leeway``;
      ``nbf``, when present, is not after ``now + leeway``.
    - ``nonce`` equals the one sent; a token carrying a nonce when none was sent is refused.
    - with ``max_age``: ``auth_time`` is required and not older than ``max_age + leeway``.

    ``now`` is the caller's wall-clock time in epoch seconds (security item 39: the
    leeway is configurable; nothing here reads a clock).

    :raises InvalidTokenError: any check failed; the message never contains the token.
    :raises ConfigurationError: invalid arguments (empty issuer/client id, ``none`` in
        ``algorithms``, negative leeway or max_age).
    """
    if not issuer or not client_id:
        raise ConfigurationError("issuer and client_id are required to validate an ID token")
    if isinstance(algorithms, str):
        raise ConfigurationError("algorithms must be a collection of names, not one string")
    if any(a.lower() == "none" for a in algorithms):
        raise ConfigurationError("'none' can never be an allowed algorithm")
    if not math.isfinite(leeway) or leeway < 0:
        raise ConfigurationError("leeway must be a finite number of seconds >= 0")
    if max_age is not None and (
        isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_EPOCH
    ):
        raise ConfigurationError("max_age must be a whole number of seconds >= 0")

    header_b64, _payload_b64, _sig_b64 = _split(token)
    header = _json_segment(header_b64, "header")
    alg = _check_header(header)
    keys = _candidate_keys(
        header, alg, jwks=jwks, algorithms=algorithms, client_secret=client_secret
    )
    payload: bytes | None = None
    for key in keys:
        payload = _verify(token, key, alg)
        if payload is not None:
            break
    if payload is None:
        raise InvalidTokenError("ID token signature verification failed")
    try:
        claims = parse_json_object(payload, what="JWT payload")
    except InvalidResponse as exc:
        raise InvalidTokenError(str(exc)) from None
    return _check_claims(
        claims,
        issuer=issuer,
        client_id=client_id,
        nonce=nonce,
        now=now,
        leeway=leeway,
        max_age=max_age,
    )


def _check_claims(
    claims: dict[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    now: float,
    leeway: float,
    max_age: int | None,
) -> IdTokenClaims:
    iss = _required_string(claims, "iss")
    if iss != issuer:
        raise InvalidTokenError(
            f"ID token 'iss' {_short(iss)} is not the expected issuer {issuer!r}"
        )
    sub = _required_string(claims, "sub")

    if "aud" not in claims:
        raise InvalidTokenError("ID token has no 'aud' claim")
    aud = _string_list(claims["aud"], "aud", allow_string=True)
    if client_id not in aud:
        raise InvalidTokenError("ID token 'aud' does not contain this client's id")
    azp = _string(claims, "azp")
    if len(aud) > 1 and azp is None:
        raise InvalidTokenError("ID token has several audiences but no 'azp' claim")
    if azp is not None and azp != client_id:
        raise InvalidTokenError("ID token 'azp' is not this client's id")

    exp = _required_number(claims, "exp")
    iat = _required_number(claims, "iat")
    nbf = _number(claims, "nbf")
    if exp <= now - leeway:
        raise InvalidTokenError("ID token has expired")
    if iat > now + leeway:
        raise InvalidTokenError("ID token 'iat' is in the future")
    if nbf is not None and nbf > now + leeway:
        raise InvalidTokenError("ID token is not valid yet ('nbf')")

    token_nonce = _string(claims, "nonce")
    if nonce is None:
        if token_nonce is not None:
            raise InvalidTokenError("ID token carries a 'nonce' but none was sent")
    elif token_nonce is None:
        raise InvalidTokenError("ID token has no 'nonce' claim")
    elif not hmac.compare_digest(token_nonce.encode("utf-8"), nonce.encode("utf-8")):
        raise InvalidTokenError("ID token 'nonce' does not match the one sent")

    auth_time = _number(claims, "auth_time")
    if max_age is not None:
        if auth_time is None:
            raise InvalidTokenError("ID token has no 'auth_time' claim but max_age was sent")
        if auth_time + max_age + leeway < now:
            raise InvalidTokenError("ID token 'auth_time' is older than max_age allows")
        if auth_time > now + leeway:
            raise InvalidTokenError("ID token 'auth_time' is in the future")

    acr = _string(claims, "acr")
    amr = (
        _string_list(claims["amr"], "amr", allow_string=False)
        if claims.get("amr") is not None
        else None
    )
    return IdTokenClaims(
        sub=sub,
        iss=iss,
        aud=aud,
        exp=exp,
        iat=iat,
        nonce=token_nonce,
        auth_time=auth_time,
        acr=acr,
        amr=amr,
        azp=azp,
        raw=MappingProxyType(claims),
    )
