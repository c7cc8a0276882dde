"""The test server's OAuth2 validator: DOT's, plus ``private_key_jwt`` and OIDC claims.

django-oauth-toolkit authenticates clients with ``client_secret_basic`` and
``client_secret_post`` only. ``private_key_jwt`` (RFC 7523 §2.2 and §3, OpenID Connect
Core §9) is added here the way an operator would add it, by overriding
``authenticate_client``: a request carrying ``client_assertion_type`` =
``urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` is authenticated by its
``client_assertion`` only, which must be

- signed (ES256/RS256/PS256/EdDSA) by the client's registered public JWK;
- ``iss`` = ``sub`` = the client id (and equal to ``client_id`` when that is sent too);
- unexpired (``exp`` required; ``nbf`` honoured) with 60 s leeway;
- for an accepted audience: the issuer, the token endpoint URL, or either, as set by
  the ``/dev/assertion-audience`` hook (``aud`` may be a string or an array; one
  accepted member suffices, as RFC 7519 §4.1.3 reads);
- carrying a ``jti`` never seen before (kept until the assertion expires).

The registered JWKs come from the launcher's configuration (DOT's Application model has
no ``jwks`` field).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from django.conf import settings
from jwcrypto import jwk, jwt
from jwcrypto.common import JWException
from oauth2_provider.oauth2_validators import OAuth2Validator

from . import hooks

_ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
_LEEWAY = 60

_seen_jti: dict[str, float] = {}
_jti_lock = threading.Lock()


def _registered_keys() -> dict[str, dict[str, Any]]:
    return {
        client["client_id"]: client["jwk"]
        for client in settings.CONFIG["clients"]
        if client.get("jwk") is not None
    }


def accepted_audiences(mode: str) -> set[str]:
    issuer = settings.ISSUER
    token_endpoint = f"{issuer}/token/"
    return {
        "issuer": {issuer},
        "token_endpoint": {token_endpoint},
        "both": {issuer, token_endpoint},
    }[mode]


def _unverified_issuer(assertion: str) -> str | None:
    try:
        token = jwt.JWT()
        token.deserialize(assertion)  # no key: parses without verifying
        payload = json.loads(token.token.objects["payload"])
    except (JWException, ValueError, KeyError, TypeError):
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    return issuer if isinstance(issuer, str) else None


def _remember_jti(jti: str, expires: float) -> bool:
    """Record ``jti``; False when it was used before (a replayed assertion)."""
    now = time.time()
    with _jti_lock:
        for old in [k for k, exp in _seen_jti.items() if exp + _LEEWAY < now]:
            del _seen_jti[old]
        if jti in _seen_jti:
            return False
        _seen_jti[jti] = expires
        return True


class TestServerValidator(OAuth2Validator):
    """DOT's validator with ``private_key_jwt`` and the test users' OIDC claims."""

    def authenticate_client(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        body = dict(request.decoded_body or ())
        if "client_assertion" in body or "client_assertion_type" in body:
            return self._authenticate_assertion(request, body)
        return bool(super().authenticate_client(request, *args, **kwargs))

    def client_authentication_required(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        body = dict(request.decoded_body or ())
        if "client_assertion" in body:
            return True  # an assertion is always checked, whatever the client type
        return bool(super().client_authentication_required(request, *args, **kwargs))

    def _authenticate_assertion(self, request: Any, body: dict[str, str]) -> bool:
        if body.get("client_assertion_type") != settings.JWT_BEARER_ASSERTION:
            return False
        assertion = body.get("client_assertion") or ""
        client_id = _unverified_issuer(assertion)
        if client_id is None or body.get("client_id", client_id) != client_id:
            return False
        public_jwk = _registered_keys().get(client_id)
        if public_jwk is None or self._load_application(client_id, request) is None:
            return False
        try:
            token = jwt.JWT(
                jwt=assertion,
                key=jwk.JWK(**public_jwk),
                algs=_ALGORITHMS,
                expected_type="JWS",
                strict_serialization=True,
                check_claims={"iss": client_id, "sub": client_id, "exp": None, "jti": None},
            )
            claims = json.loads(token.claims)
        except (JWException, ValueError, TypeError):
            return False
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not accepted_audiences(hooks.assertion_audience()) & {
            a for a in audiences if isinstance(a, str)
        }:
            return False
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or not _remember_jti(jti, float(claims["exp"])):
            return False
        request.client_id = client_id
        return True

    def get_discovery_claims(self, request: Any) -> list[str]:
        return ["sub", "email", "email_verified", "name", "preferred_username"]

    # OpenID Connect claims: DOT issues only ``sub`` (the user's primary key) unless the
    # operator adds claims, as its documentation shows. ``sub`` stays DOT's default.
    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            "email": user.email,
            "email_verified": True,
            "name": f"{user.first_name} {user.last_name}".strip(),
            "preferred_username": user.get_username(),
        }
