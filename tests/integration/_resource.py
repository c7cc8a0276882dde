"""Small protected resources (RFC 6750 / RFC 9068 / RFC 9449 / RFC 9396) for the tests.

They validate the local authorization server's JWT access tokens for real (signature with
the server's JWKS, ``iss``, ``aud`` = their resource URI, ``exp``) and answer like
well-behaved APIs: ``401 invalid_token``, ``403 insufficient_scope`` with the needed
scope, ``401 insufficient_user_authentication`` (RFC 9470) when asked to.

A token bound to a DPoP key (``cnf.jkt``) is accepted only as ``Authorization: DPoP``
with a valid proof (RFC 9449 §7.1, §4.3): signature with the proof's own public key whose
thumbprint is ``cnf.jkt``, ``typ``, an asymmetric ``alg``, ``htm``, ``htu`` (without query
and fragment), ``iat`` within a window, ``ath`` = the token's hash, a ``jti`` never seen
before, and the resource's nonce when it demands one (``401 use_dpop_nonce`` with
``DPoP-Nonce``). A bearer token is never accepted with the DPoP scheme, nor a bound one
as a bearer token. So a stolen token alone is useless here.

:class:`PaymentsAPI` also enforces RFC 9396 ``authorization_details``: a payment is made
only if the token carries a ``payment_initiation`` detail for exactly that amount,
currency, creditor and invoice.

Served in-process through ``httpx2.ASGITransport``; no socket needed. Test code: small on
purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws, jwt
from joserfc.jwk import KeySet, import_key

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_ASYMMETRIC = {"ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "PS256"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _thumbprint(jwk: dict[str, Any]) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    wanted = {k: jwk[k] for k in members[jwk["kty"]]}
    text = json.dumps(wanted, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(text.encode()).digest())


class _Registry(jws.JWSRegistry):
    max_header_length = 8 * 1024  # an RSA public key in the header is bigger than 512


class Refused(Exception):
    def __init__(self, status: int, challenge: str, nonce: str | None = None) -> None:
        super().__init__(challenge)
        self.status = status
        self.challenge = challenge
        self.nonce = nonce


@dataclass
class TokenCheck:
    """The resource server side of RFC 6750 + RFC 9449 for one resource URI."""

    issuer: str
    jwks: dict[str, Any]
    resource: str
    #: demand a DPoP nonce (RFC 9449 §9)
    require_nonce: bool = False
    iat_window: float = 60.0
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    seen_jti: set[str] = field(default_factory=set)
    proofs: list[dict[str, Any]] = field(default_factory=list)

    def authenticate(self, method: str, url: str, headers: dict[str, str]) -> dict[str, Any]:
        """The token's claims, or :class:`Refused`."""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "dpop") or not value:
            raise Refused(401, 'Bearer realm="api", DPoP algs="ES256 EdDSA RS256"')
        try:
            claims = dict(jwt.decode(value, KeySet.import_key_set(self.jwks)).claims)
        except Exception:
            raise Refused(401, f'{scheme} error="invalid_token"') from None
        if (
            claims.get("iss") != self.issuer
            or claims.get("aud") != self.resource
            or float(claims.get("exp", 0)) < time.time()
        ):
            raise Refused(401, f'{scheme} error="invalid_token"')
        jkt = (claims.get("cnf") or {}).get("jkt")
        if jkt is None:
            if scheme.lower() != "bearer" or "dpop" in headers:
                # a bearer token is never accepted with a DPoP scheme or proof
                raise Refused(401, 'Bearer error="invalid_token"')
            return claims
        if scheme.lower() != "dpop":  # a bound token presented as a bearer token
            raise Refused(401, 'DPoP error="invalid_token", algs="ES256"')
        self._check_proof(headers.get("dpop"), method, url, value, jkt)
        return claims

    def _check_proof(self, proof: str | None, method: str, url: str, token: str, jkt: str) -> None:
        bad = Refused(401, 'DPoP error="invalid_dpop_proof"')
        if not proof:
            raise bad
        try:
            header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
            jwk = header["jwk"]
            if header.get("typ") != "dpop+jwt" or header.get("alg") not in _ASYMMETRIC:
                raise ValueError("typ/alg")
            if {"d", "p", "q", "k"} & set(jwk):
                raise ValueError("private jwk")
            key = import_key(jwk)
            verified = jws.deserialize_compact(
                proof, key, registry=_Registry(algorithms=[header["alg"]])
            )
            claims = json.loads(verified.payload)
        except Exception:
            raise bad from None
        self.proofs.append({"header": header, "claims": claims, "url": url})
        htu = url.split("?", 1)[0].split("#", 1)[0]
        if (
            _thumbprint(jwk) != jkt
            or claims.get("htm") != method
            or claims.get("htu") != htu
            or claims.get("ath") != _b64(hashlib.sha256(token.encode()).digest())
            or not isinstance(claims.get("jti"), str)
            or len(claims["jti"]) < 16
            or abs(time.time() - float(claims.get("iat", 0))) > self.iat_window
        ):
            raise bad
        if claims["jti"] in self.seen_jti:  # replayed proof
            raise bad
        if self.require_nonce and claims.get("nonce") != self.nonce:
            raise Refused(401, 'DPoP error="use_dpop_nonce"', nonce=self.nonce)
        self.seen_jti.add(claims["jti"])


def _url(scope: Scope, headers: dict[str, str]) -> str:
    return f"{scope['scheme']}://{headers.get('host', '')}{scope['path']}"


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, refused: Refused) -> None:
    headers = {"www-authenticate": refused.challenge}
    if refused.nonce is not None:
        headers["dpop-nonce"] = refused.nonce
    await _respond(send, refused.status, b"{}", headers)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


@dataclass
class CalendarAPI:
    """``GET`` needs ``calendar.read``; ``POST`` needs ``calendar.write``."""

    issuer: str
    jwks: dict[str, Any]
    resource: str = "https://calendar.example/api"
    #: answer 401 invalid_token to this many valid requests (a token revoked at the AS)
    reject_next: int = 0
    #: always answer 403 insufficient_scope (a misbehaving resource)
    always_insufficient: bool = False
    #: ask for a fresh authentication once (RFC 9470)
    require_fresh_authentication: bool = False
    #: demand DPoP nonces
    require_nonce: bool = False
    #: the scope prefix: ``<scope>.read`` / ``<scope>.write``
    scope: str = "calendar"
    seen: list[dict[str, Any]] = field(default_factory=list)
    check: TokenCheck | None = None

    def __post_init__(self) -> None:
        if self.check is None:
            self.check = TokenCheck(
                self.issuer, self.jwks, self.resource, require_nonce=self.require_nonce
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        assert self.check is not None
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"method": scope["method"], "path": scope["path"], "headers": headers})
        try:
            claims = self.check.authenticate(scope["method"], _url(scope, headers), headers)
        except Refused as refused:
            await _refuse(send, refused)
            return
        scheme = "DPoP" if "cnf" in claims else "Bearer"
        if self.reject_next > 0:
            self.reject_next -= 1
            await _refuse(send, Refused(401, f'{scheme} error="invalid_token"'))
            return
        if self.require_fresh_authentication:
            self.require_fresh_authentication = False
            await _refuse(
                send,
                Refused(
                    401,
                    f'{scheme} error="insufficient_user_authentication", '
                    'error_description="A fresh authentication is required", '
                    'acr_values="urn:example:mfa", max_age="0"',
                ),
            )
            return
        write = scope["method"] in ("POST", "PUT", "DELETE")
        needed = f"{self.scope}.write" if write else f"{self.scope}.read"
        granted = str(claims.get("scope", "")).split()
        if self.always_insufficient or needed not in granted:
            await _refuse(
                send, Refused(403, f'{scheme} error="insufficient_scope", scope="{needed}"')
            )
            return
        body = {"sub": claims.get("sub"), "scope": claims.get("scope"), "act": claims.get("act")}
        await _respond(send, 200, json.dumps(body).encode(), {})


@dataclass
class PaymentsAPI:
    """``POST /api/payments`` with ``{"amount", "currency", "creditor", "invoice"}`` needs
    ``payments.write`` AND a ``payment_initiation`` authorization detail (RFC 9396) in the
    token for exactly that payment; ``require_dpop`` refuses unbound tokens."""

    issuer: str
    jwks: dict[str, Any]
    resource: str = "https://payments.example/api"
    require_dpop: bool = False
    require_nonce: bool = False
    paid: list[dict[str, Any]] = field(default_factory=list)
    check: TokenCheck | None = None

    def __post_init__(self) -> None:
        if self.check is None:
            self.check = TokenCheck(
                self.issuer, self.jwks, self.resource, require_nonce=self.require_nonce
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        assert self.check is not None
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        payment = json.loads(await _body(receive) or b"{}")
        try:
            claims = self.check.authenticate(scope["method"], _url(scope, headers), headers)
        except Refused as refused:
            await _refuse(send, refused)
            return
        bound = "cnf" in claims
        scheme = "DPoP" if bound else "Bearer"
        if self.require_dpop and not bound:
            await _refuse(send, Refused(401, 'DPoP error="invalid_token", algs="ES256"'))
            return
        if "payments.write" not in str(claims.get("scope", "")).split():
            await _refuse(
                send, Refused(403, f'{scheme} error="insufficient_scope", scope="payments.write"')
            )
            return
        approved = [
            d
            for d in claims.get("authorization_details") or []
            if d.get("type") == "payment_initiation"
            and d.get("instructedAmount")
            == {
                "amount": payment.get("amount"),
                "currency": payment.get("currency"),
            }
            and d.get("creditorName") == payment.get("creditor")
            and d.get("remittanceInformationUnstructured") == payment.get("invoice")
        ]
        if not approved:
            await _refuse(
                send, Refused(403, f'{scheme} error="insufficient_authorization_details"')
            )
            return
        self.paid.append(payment)
        await _respond(send, 200, json.dumps({"paid": payment}).encode(), {})
