"""DPoP: sender-constrained tokens (RFC 9449), sans-IO. Security items 34-37.

- **Proofs** (RFC 9449 §4.2, security item 34): a JWS with the header ``typ: dpop+jwt``,
  an asymmetric ``alg`` and the PUBLIC ``jwk`` only; claims ``jti`` (128 random bits),
  ``htm``, ``htu`` (the request URI without query and fragment), ``iat``, ``ath`` (the
  base64url SHA-256 of the access token, on resource requests, §4.3) and ``nonce`` when
  the server gave one (§8, §9). :meth:`DPoPSigner.proof` makes a fresh one for every
  request (security item 35); callers never reuse a proof, not even for a retry.
- **Keys**: a :class:`DPoPKey` signs; a :class:`DPoPKeyProvider` makes and reloads them.
  The default provider, :class:`SoftwareDPoPKeys`, generates keys in the process (ES256 by
  default; EdDSA or RS256 when the server lists only those in
  ``dpop_signing_alg_values_supported``) and exports the private JWK so that it is sealed
  in the token vault with the grant it is bound to. A provider for keys that never leave
  a KMS or HSM exports a reference instead and signs remotely. The JWS is assembled here
  (header and payload JSON, base64url) because a remote key can only sign bytes; the
  signatures themselves come from ``cryptography`` (or the KMS), never from code here.
- **Nonces** (RFC 9449 §8, §9; security item 37): :class:`DPoPNonces` keeps the last
  ``DPoP-Nonce`` per origin (scheme, host, port), so a nonce is only ever sent back to the
  server that issued it.
- **Thumbprints** (RFC 7638) for ``dpop_jkt`` (§10) and the ``cnf.jkt`` check (§6.1).

Nothing here performs I/O or reads the clock: the caller passes a ``time`` function.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from agent_identity._limits import display_text
from agent_identity.errors import ConfigurationError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DPOP_ALGORITHMS",
    "DPoPKey",
    "DPoPKeyProvider",
    "DPoPNonces",
    "DPoPSigner",
    "SoftwareDPoPKeys",
    "access_token_hash",
    "choose_algorithm",
    "htu_of",
    "jwk_thumbprint",
]

#: The asymmetric JWS algorithms a DPoP key may use (RFC 9449 §4.2: never ``none``,
#: never a MAC), with the JWK key type each needs.
DPOP_ALGORITHMS: Final[Mapping[str, str]] = {
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
}
#: The default preference: ES256, then EdDSA, then RS256 (when the server lists them).
DEFAULT_ALGORITHMS: Final = ("ES256", "EdDSA", "RS256")

_EC_CURVES: Final = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PUBLIC_MEMBERS: Final = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
_MAX_NONCE: Final = 1024
_MAX_ORIGINS: Final = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def access_token_hash(access_token: str) -> str:
    """``ath`` (RFC 9449 §4.2): base64url(SHA-256(ASCII(access token)))."""
    if not access_token.isascii():  # encode()'s exception would carry the whole token
        raise ConfigurationError("the access token is not ASCII (RFC 9449 §7.1)")
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest())


@functools.lru_cache(maxsize=256)
def htu_of(url: str) -> str:
    """``htu`` (RFC 9449 §4.2): the target URI without query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@functools.lru_cache(maxsize=256)
def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 443 if scheme == "https" else 80
    return (scheme, (parts.hostname or "").lower(), port if port is not None else default)


def public_members(jwk: Mapping[str, Any]) -> dict[str, str]:
    """The members of a public JWK that a proof header carries (RFC 7638 §3.2 set),
    refusing private or symmetric key material (security item 34)."""
    if not isinstance(jwk, Mapping):
        raise ConfigurationError("a DPoP public key must be a JWK (a mapping)")
    if _PRIVATE_MEMBERS & set(jwk):
        raise ConfigurationError(
            "a DPoP proof carries a public key only: the JWK has private members"
        )
    kty = jwk.get("kty")
    names = _PUBLIC_MEMBERS.get(str(kty))
    if names is None:
        raise ConfigurationError(f"DPoP key type {kty!r} is not supported (EC, OKP or RSA)")
    out: dict[str, str] = {}
    for name in names:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"the DPoP public JWK lacks {name!r}")
        out[name] = value
    return out


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url (``jkt``, RFC 9449 §6)."""
    members = public_members(jwk)
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _b64(hashlib.sha256(canonical).digest())


def choose_algorithm(supported: Sequence[str] | None, preference: Sequence[str]) -> str:
    """The first algorithm of ``preference`` the server supports (any of them when it does
    not say). :class:`ConfigurationError` when none fits."""
    for alg in preference:
        if alg not in DPOP_ALGORITHMS:
            raise ConfigurationError(f"{alg!r} is not an asymmetric JWS algorithm for DPoP")
    if not supported:
        return preference[0]
    for alg in preference:
        if alg in supported or (alg == "EdDSA" and "Ed25519" in supported):
            return alg if alg in supported else "Ed25519"
    raise ConfigurationError(
        "the authorization server supports no DPoP algorithm this client can use "
        f"(it lists {display_text(', '.join(map(str, supported)))}; "
        f"the client offers {', '.join(preference)})"
    )


# -- keys ------------------------------------------------------------------------------


@runtime_checkable
class DPoPKey(Protocol):
    """One DPoP key pair. The SDK only ever reads the public half and asks for signatures.

    ``algorithm`` is the JWS ``alg`` (ES256, EdDSA, RS256, ...); ``public_jwk`` the public
    JWK (private members are refused); :meth:`sign` returns the JWS signature of the
    signing input (RFC 7518: ``R || S`` for ECDSA; a DER ECDSA signature, as KMS services
    return, is converted); :meth:`export` what is sealed in the vault with the grant: the
    private JWK of a software key, a key reference for a KMS key.
    """

    @property
    def algorithm(self) -> str: ...

    @property
    def public_jwk(self) -> Mapping[str, Any]: ...

    async def sign(self, signing_input: bytes) -> bytes: ...

    def export(self) -> dict[str, Any]: ...


@runtime_checkable
class DPoPKeyProvider(Protocol):
    """Makes DPoP keys (one per grant) and loads them back from what they exported.

    ``generate`` gets the server's ``dpop_signing_alg_values_supported`` (``()`` when it
    does not say). ``load`` gets what :meth:`DPoPKey.export` returned, as read from the
    vault, and raises :class:`~agent_identity.errors.ConfigurationError` for anything it
    does not recognise (e.g. a software key when the provider is a KMS).
    """

    async def generate(self, algorithms: Sequence[str]) -> DPoPKey: ...

    def load(self, exported: Mapping[str, Any]) -> DPoPKey: ...


class _SoftwareKey:
    """A key held in this process (``cryptography``), exported as a private JWK."""

    __slots__ = ("_alg", "_jwk", "_native", "_public", "_sign")

    def __init__(self, alg: str, native: Any, jwk: dict[str, Any]) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

        self._alg = alg
        self._native = native
        self._jwk = jwk
        self._public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
        bits = alg[-3:]
        digest: Any = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}.get(bits)
        sign: Callable[[bytes], bytes]
        if alg in _EC_CURVES:
            size = _EC_CURVES[alg][1]
            algorithm = ec.ECDSA(digest())

            def sign(data: bytes) -> bytes:
                r, s = utils.decode_dss_signature(native.sign(data, algorithm))
                return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        elif alg.startswith("RS"):

            def sign(data: bytes) -> bytes:
                return bytes(native.sign(data, padding.PKCS1v15(), digest()))

        elif alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest()), salt_length=digest().digest_size)

            def sign(data: bytes) -> bytes:
                return bytes(native.sign(data, pss, digest()))

        else:  # EdDSA / Ed25519

            def sign(data: bytes) -> bytes:
                return bytes(native.sign(data))

        self._sign = sign

    @property
    def algorithm(self) -> str:
        return self._alg

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        return self._public

    async def sign(self, signing_input: bytes) -> bytes:
        return self._sign(signing_input)

    def sign_now(self, signing_input: bytes) -> bytes:
        """The signature without an await (software keys only: used on the hot path)."""
        return self._sign(signing_input)

    def export(self) -> dict[str, Any]:
        return {"kind": "jwk", "alg": self._alg, "jwk": dict(self._jwk)}

    def __repr__(self) -> str:
        return f"SoftwareDPoPKey(alg={self._alg!r})"


class SoftwareDPoPKeys:
    """The default :class:`DPoPKeyProvider`: keys generated in this process, one per grant,
    their private JWK sealed in the token vault with the grant (losing one loses both).

    :param algorithms: preference order (default ES256, then EdDSA, then RS256); the first
        one the server lists in ``dpop_signing_alg_values_supported`` is used.
    """

    def __init__(self, algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> None:
        if isinstance(algorithms, str) or not algorithms:
            raise ConfigurationError("algorithms must be a non-empty sequence of JWS names")
        for alg in algorithms:
            if alg not in DPOP_ALGORITHMS:
                raise ConfigurationError(f"{alg!r} is not an asymmetric JWS algorithm for DPoP")
        self.algorithms = tuple(algorithms)

    def __repr__(self) -> str:
        return f"SoftwareDPoPKeys(algorithms={self.algorithms!r})"

    async def generate(self, algorithms: Sequence[str]) -> DPoPKey:
        return self.generate_now(choose_algorithm(algorithms, self.algorithms))

    def generate_now(self, alg: str) -> _SoftwareKey:
        """A new key for ``alg`` (synchronous)."""
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        native: Any
        if alg in _EC_CURVES:
            curves: dict[str, ec.EllipticCurve] = {
                "ES256": ec.SECP256R1(),
                "ES384": ec.SECP384R1(),
                "ES512": ec.SECP521R1(),
            }
            native = ec.generate_private_key(curves[alg])
        elif alg in ("EdDSA", "Ed25519"):
            native = ed25519.Ed25519PrivateKey.generate()
        elif DPOP_ALGORITHMS.get(alg) == "RSA":
            native = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ConfigurationError(f"{alg!r} is not an asymmetric JWS algorithm for DPoP")
        return _SoftwareKey(alg, native, _private_jwk(native))

    def load(self, exported: Mapping[str, Any]) -> DPoPKey:
        problem: str | None = None
        if not isinstance(exported, Mapping) or exported.get("kind") != "jwk":
            problem = "not a software DPoP key (another key provider made it)"
        else:
            alg, jwk = exported.get("alg"), exported.get("jwk")
            if not isinstance(alg, str) or alg not in DPOP_ALGORITHMS:
                problem = "the stored DPoP key names no usable algorithm"
            elif not isinstance(jwk, Mapping) or "d" not in jwk:
                problem = "the stored DPoP key holds no private JWK"
            else:
                native = _native_private(jwk)
                if native is None:
                    problem = "the stored DPoP key does not import"
                else:
                    return _SoftwareKey(alg, native, dict(jwk))
        raise ConfigurationError(problem)


def _private_jwk(native: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    key: Any
    if isinstance(native, ec.EllipticCurvePrivateKey):
        key = ECKey.import_key(native)
    elif isinstance(native, ed25519.Ed25519PrivateKey):
        key = OKPKey.import_key(native)
    else:
        key = RSAKey.import_key(native)
    return {str(k): v for k, v in key.as_dict(private=True).items() if k != "kid"}


def _native_private(jwk: Mapping[str, Any]) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from joserfc.errors import JoseError
    from joserfc.jwk import import_key

    try:
        key = import_key(dict(jwk))
    except (JoseError, ValueError, TypeError, KeyError, IndexError, UnsupportedAlgorithm):
        return None
    if not key.is_private:
        return None
    return key.raw_value


# -- nonces ----------------------------------------------------------------------------


class DPoPNonces:
    """The last ``DPoP-Nonce`` of each origin (RFC 9449 §8.2, §9): a nonce is only ever
    sent back to the origin (scheme, host, port) that issued it (security item 37).
    Bounded: the least recently used origins are forgotten beyond ``max_origins``."""

    __slots__ = ("_by_origin", "_max")

    def __init__(self, max_origins: int = _MAX_ORIGINS) -> None:
        self._by_origin: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._max = max_origins

    def __repr__(self) -> str:
        return f"DPoPNonces(origins={len(self._by_origin)})"

    def get(self, url: str) -> str | None:
        """The nonce to put in a proof for ``url``, if its origin gave one."""
        return self._by_origin.get(_origin(url))

    def remember(self, url: str, value: str | None) -> bool:
        """Keep ``value`` (a response's ``DPoP-Nonce``) for the origin of ``url``; a
        malformed value is ignored. Returns whether a nonce was kept."""
        if value is None:
            return False
        origin = _origin(url)
        if self._by_origin.get(origin) == value:
            return True  # the nonce we hold (checked when it was kept)
        nonce = value.strip()
        # RFC 9449 §8.1: nonce = 1*NQCHAR (%x21 / %x23-5B / %x5D-7E)
        if (
            not nonce
            or len(nonce) > _MAX_NONCE
            or not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in nonce)
        ):
            return False
        self._by_origin[origin] = nonce
        self._by_origin.move_to_end(origin)
        while len(self._by_origin) > self._max:
            self._by_origin.popitem(last=False)
        return True


# -- proofs ----------------------------------------------------------------------------


class DPoPSigner:
    """A DPoP key ready to sign proofs, with the nonce cache of the client it serves.

    The header (``typ``, ``alg``, the public ``jwk``) is checked and encoded once; each
    :meth:`proof` adds a fresh ``jti``, ``htm``, ``htu``, ``iat``, ``ath`` for a resource
    request, and the origin's nonce. ``repr`` shows the algorithm and the key thumbprint
    (public), never key material.
    """

    __slots__ = ("_ath", "_header", "_now_sign", "_time", "algorithm", "jkt", "key", "nonces")

    def __init__(self, key: DPoPKey, *, nonces: DPoPNonces, time: Callable[[], float]) -> None:
        alg = key.algorithm
        kty = DPOP_ALGORITHMS.get(alg) if isinstance(alg, str) else None
        if kty is None:
            raise ConfigurationError(
                f"DPoP key algorithm {alg!r} is not an asymmetric JWS algorithm"
            )
        public = dict(key.public_jwk)
        members = public_members(public)  # refuses private members (security item 34)
        if members["kty"] != kty:
            raise ConfigurationError(f"a {members['kty']} key cannot sign {alg}")
        if alg in _EC_CURVES and members.get("crv") != _EC_CURVES[alg][0]:
            raise ConfigurationError(f"{alg} needs a {_EC_CURVES[alg][0]} key")
        if kty == "OKP" and members.get("crv") != "Ed25519":
            raise ConfigurationError(f"{alg} proofs need an Ed25519 key")
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": members}
        self._header = _b64(_json(header))
        self.key = key
        self.algorithm = alg
        self.jkt = jwk_thumbprint(members)
        self.nonces = nonces
        self._time = time
        self._now_sign: Callable[[bytes], bytes] | None = (
            key.sign_now if isinstance(key, _SoftwareKey) else None
        )
        self._ath: tuple[str, str] = ("", "")  # the last (access token, ath)

    def __repr__(self) -> str:
        return f"DPoPSigner(alg={self.algorithm!r}, jkt={self.jkt!r})"

    def _signing_input(self, method: str, url: str, access_token: str | None) -> str:
        now = self._time()
        if not math.isfinite(now):
            raise ConfigurationError("the clock returned a non-finite time")
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),  # 128 bits (security item 34: >= 96)
            "htm": method.upper(),
            "htu": htu_of(url),
            "iat": int(now),
        }
        nonce = self.nonces.get(url)
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            token, ath = self._ath
            if token != access_token:
                ath = access_token_hash(access_token)
                self._ath = (access_token, ath)
            claims["ath"] = ath
        return f"{self._header}.{_b64(_json(claims))}"

    async def proof(self, method: str, url: str, *, access_token: str | None = None) -> str:
        """A new proof for one request (``access_token``: the token it presents, for
        ``ath``). Every call makes a new ``jti``: a proof is never reused."""
        signing_input = self._signing_input(method, url, access_token)
        data = signing_input.encode("ascii")
        if self._now_sign is not None:
            signature = self._now_sign(data)
        else:
            signature = _jws_signature(self.algorithm, await self.key.sign(data))
        return f"{signing_input}.{_b64(signature)}"

    def remember_nonce(self, url: str, value: str | None) -> bool:
        """Keep a ``DPoP-Nonce`` the server at ``url`` sent (see :class:`DPoPNonces`)."""
        return self.nonces.remember(url, value)


def _jws_signature(alg: str, signature: Any) -> bytes:
    """Check (and for a DER ECDSA signature, convert) what a key provider returned."""
    if not isinstance(signature, bytes | bytearray) or not signature:
        raise ConfigurationError("the DPoP key returned no signature bytes")
    raw = bytes(signature)
    curve = _EC_CURVES.get(alg)
    if curve is None or len(raw) == 2 * curve[1]:
        return raw
    from cryptography.hazmat.primitives.asymmetric import utils

    try:
        r, s = utils.decode_dss_signature(raw)
        return r.to_bytes(curve[1], "big") + s.to_bytes(curve[1], "big")
    except (ValueError, OverflowError):
        raise ConfigurationError(f"the DPoP key returned a malformed {alg} signature") from None
