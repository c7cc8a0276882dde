"""The AuthorizationServer seam (issue 10): static metadata, learned servers, deviant error
responses, grant checks, the JWK Set cache, honest token labels and authorization
parameters. Every request goes through ``httpx2.MockTransport``; what matters is what is
sent (and what is not)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from pydantic import SecretStr

from agent_identity import (
    ConfigurationError,
    IdentityClient,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidScope,
    OAuthError,
    SSRFBlockedError,
    UnsupportedGrantType,
)
from agent_identity._http import HttpDriver, TransportPolicy
from agent_identity.models import TokenResponse
from agent_identity.oauth._message import HttpResponse
from agent_identity.providers import ProviderProfile
from agent_identity.server import (
    TOKEN_EXCHANGE_GRANT,
    AuthorizationServer,
    map_token_error,
    token_facts,
)

pytestmark = pytest.mark.anyio

ISSUER = "https://as.example"


def metadata(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "pushed_authorization_request_endpoint": f"{ISSUER}/par",
        "revocation_endpoint": f"{ISSUER}/revoke",
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, answer: Callable[[httpx2.Request], httpx2.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.answer(request)

    def form(self, index: int = -1) -> list[tuple[str, str]]:
        return parse_qsl(self.requests[index].content.decode(), keep_blank_values=True)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def server_with(
    recorder: Recorder, *, resolve: Any = None, **kwargs: Any
) -> tuple[AuthorizationServer, HttpDriver]:
    policy = TransportPolicy(allow_private_addresses=kwargs.pop("allow_private", False))
    driver = HttpDriver(
        policy,
        client=httpx2.AsyncClient(transport=httpx2.MockTransport(recorder)),
        resolve=resolve,
    )
    kwargs.setdefault("client_id", "agent")
    kwargs.setdefault("client_secret", "s3cret")
    return AuthorizationServer(kwargs.pop("issuer", ISSUER), http=driver, **kwargs), driver


def _token(**extra: Any) -> httpx2.Response:
    return httpx2.Response(200, json={"access_token": "AT", "token_type": "Bearer", **extra})


# --------------------------------------------------------------------------- metadata


async def test_static_metadata_sends_no_discovery_request() -> None:
    recorder = Recorder(lambda r: _token())
    server, _ = server_with(recorder, metadata=metadata())
    assert server.discovered
    await server.discover()
    await server.client_credentials(scopes=["a"], resource=None)
    assert recorder.paths() == ["/token"]


async def test_static_metadata_must_name_the_configured_issuer() -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        server_with(Recorder(lambda r: _token()), metadata=metadata(issuer="https://other"))


async def test_static_metadata_mapping_is_validated_without_echoing_values() -> None:
    with pytest.raises(ConfigurationError, match="grant_types_supported"):
        server_with(Recorder(lambda r: _token()), metadata=metadata(grant_types_supported=5))


async def test_identity_client_takes_static_metadata_without_an_issuer() -> None:
    recorder = Recorder(lambda r: _token())
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(recorder)) as http,
        IdentityClient(
            metadata=metadata(), client_id="agent", client_secret="s", http_client=http
        ) as identity,
    ):
        assert identity.issuer == ISSUER
        token = await identity.client_credentials(scopes=["a"])
    assert token.issuer == ISSUER
    assert recorder.paths() == ["/token"]


async def test_sec_02_endpoints_learned_from_discovery_are_vetted() -> None:
    """Security item 2 for learned endpoints: a discovered token endpoint on another
    origin than the configured issuer is server-supplied, so a private address is refused
    before any connection."""
    document = metadata(token_endpoint="https://internal.example/token")
    recorder = Recorder(lambda r: httpx2.Response(200, json=document))
    resolved: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["10.0.0.7"] if host == "internal.example" else ["93.184.216.34"]

    server, _ = server_with(recorder, resolve=resolve)
    await server.discover()
    with pytest.raises(SSRFBlockedError):
        await server.client_credentials(scopes=(), resource=None)
    assert "internal.example" in resolved
    assert all(r.url.host != "internal.example" for r in recorder.requests)


async def test_sec_02_static_endpoints_are_configuration_not_vetted() -> None:
    document = metadata(token_endpoint="https://internal.example/token")
    recorder = Recorder(lambda r: _token())

    async def resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    server, _ = server_with(recorder, resolve=resolve, metadata=document)
    await server.client_credentials(scopes=(), resource=None)
    assert recorder.requests[-1].url.host == "internal.example"


async def test_sec_02_a_learned_server_trusts_nothing() -> None:
    """An authorization server named by another server (MCP) is vetted, issuer included."""
    recorder = Recorder(lambda r: _token())

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    server, _ = server_with(recorder, resolve=resolve, metadata=metadata(), learned=True)
    with pytest.raises(SSRFBlockedError):
        await server.client_credentials(scopes=(), resource=None)
    assert recorder.requests == []


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "grant", "expected", "raw"),
    [
        (400, b"", "refresh_token", InvalidGrant, "invalid_grant"),
        (401, b"", "refresh_token", InvalidGrant, "invalid_grant"),
        (400, b"<html>bad</html>", "refresh_token", InvalidGrant, "invalid_grant"),
        (401, b"", "client_credentials", InvalidClient, "invalid_client"),
        (403, b"Forbidden", "client_credentials", InvalidClient, "invalid_client"),
        (403, b"", "refresh_token", InvalidClient, "invalid_client"),
        (400, b"", TOKEN_EXCHANGE_GRANT, UnsupportedGrantType, "unsupported_grant_type"),
        (400, b"", "authorization_code", InvalidRequest, "invalid_request"),
        (400, b'{"error":"scope_invalid"}', "refresh_token", OAuthError, "scope_invalid"),
        (403, b'{"error":"forbidden_thing"}', "client_credentials", InvalidClient, None),
        (400, b'{"error":"invalid_grant"}', "refresh_token", InvalidGrant, "invalid_grant"),
    ],
)
def test_deviant_token_errors_map_to_what_they_mean(
    status: int, body: bytes, grant: str, expected: type[Exception], raw: str | None
) -> None:
    error = map_token_error(HttpResponse(status, {}, body), grant_type=grant)
    assert type(error) is expected
    assert isinstance(error, OAuthError)
    assert error.status_code == status
    assert error.error == (raw or "forbidden_thing")  # the raw code is kept


def test_provider_aliases_keep_the_raw_code() -> None:
    error = map_token_error(
        HttpResponse(400, {}, b'{"error":"scope_invalid","error_description":"nope"}'),
        grant_type="refresh_token",
        aliases={"scope_invalid": "invalid_scope"},
    )
    assert isinstance(error, InvalidScope)
    assert error.error == "scope_invalid"
    assert error.error_description == "nope"


def test_a_5xx_without_body_stays_an_invalid_response() -> None:
    error = map_token_error(HttpResponse(502, {}, b""), grant_type="refresh_token")
    assert isinstance(error, InvalidResponse)


async def test_token_exchange_is_refused_before_any_request_when_not_listed() -> None:
    recorder = Recorder(lambda r: _token(issued_token_type="x"))
    server, _ = server_with(recorder, metadata=metadata())
    with pytest.raises(UnsupportedGrantType, match="no request was sent"):
        await server.token_exchange(
            subject_token=SecretStr("subject"),
            subject_token_type="urn:ietf:params:oauth:token-type:access_token",
        )
    assert recorder.requests == []


async def test_refresh_error_is_returned_with_the_salvaged_refresh_token() -> None:
    recorder = Recorder(
        lambda r: httpx2.Response(
            200, json={"token_type": "Bearer", "refresh_token": "RT-new", "expires_in": "x"}
        )
    )
    server, _ = server_with(recorder, metadata=metadata())
    outcome = await server.refresh(SecretStr("RT-old"), scopes=["a"], resource=None)
    assert outcome.response is None
    assert isinstance(outcome.error, InvalidResponse)
    assert outcome.salvaged_refresh_token is not None
    assert outcome.salvaged_refresh_token.get_secret_value() == "RT-new"


async def test_a_server_that_shrinks_grants_gets_unnarrowed_refreshes() -> None:
    recorder = Recorder(lambda r: _token())
    server, _ = server_with(recorder, metadata=metadata())
    await server.refresh(SecretStr("RT"), scopes=["a"], resource="https://api.example")
    assert ("scope", "a") in recorder.form()
    server.narrow_refresh = False
    await server.refresh(SecretStr("RT"), scopes=["a"], resource="https://api.example")
    assert "scope" not in dict(recorder.form())  # the whole grant: every scope...
    assert "resource" not in dict(recorder.form())  # ...and every resource


# --------------------------------------------------------------------------- client auth


async def test_private_key_jwt_audience_can_be_the_token_endpoint() -> None:
    key = ECKey.generate_key("P-256").as_dict(private=True)
    recorder = Recorder(lambda r: _token())
    server, _ = server_with(
        recorder,
        client_secret=None,
        private_key=key,
        metadata=metadata(token_endpoint_auth_methods_supported=["private_key_jwt"]),
        assertion_audience="token_endpoint",
    )
    await server.client_credentials(scopes=(), resource=None)
    assertion = dict(recorder.form())["client_assertion"]
    payload = assertion.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == f"{ISSUER}/token"


async def test_registered_method_client_secret_post_is_used_when_basic_is_listed_too() -> None:
    recorder = Recorder(lambda r: _token())
    server, _ = server_with(
        recorder, metadata=metadata(), token_endpoint_auth_method="client_secret_post"
    )
    await server.client_credentials(scopes=(), resource=None)
    assert "authorization" not in recorder.requests[-1].headers
    assert ("client_secret", "s3cret") in recorder.form()


def test_registered_method_must_fit_the_credential() -> None:
    with pytest.raises(ConfigurationError, match="needs a private_key"):
        server_with(
            Recorder(lambda r: _token()),
            metadata=metadata(token_endpoint_auth_methods_supported=["private_key_jwt"]),
            token_endpoint_auth_method="private_key_jwt",
        )


# --------------------------------------------------------------------------- authorization


async def test_several_resources_and_extra_parameters_are_pushed_and_validated() -> None:
    recorder = Recorder(
        lambda r: httpx2.Response(201, json={"request_uri": "urn:x", "expires_in": 60})
    )
    server, _ = server_with(recorder, metadata=metadata())
    pending, url = await server.start_authorization(
        redirect_uri="http://127.0.0.1:5000/cb",
        scopes=["openid", "a"],
        resources=["https://one.example", "https://two.example"],
        login_hint="alice@example.com",
        extra={"ui_locales": "fr"},
    )
    pushed = recorder.form()
    assert [v for k, v in pushed if k == "resource"] == [
        "https://one.example",
        "https://two.example",
    ]
    assert ("login_hint", "alice@example.com") in pushed
    assert ("ui_locales", "fr") in pushed
    assert pending.resources == ("https://one.example", "https://two.example")
    assert "request_uri=urn" in url


@pytest.mark.parametrize(
    "name", ["state", "code_challenge", "redirect_uri", "client_id", "nonce", "resource"]
)
async def test_extra_parameters_never_override_what_the_sdk_sets(name: str) -> None:
    server, _ = server_with(Recorder(lambda r: _token()), metadata=metadata(), use_par=False)
    with pytest.raises(ConfigurationError, match=name):
        await server.start_authorization(
            redirect_uri="http://127.0.0.1:5000/cb", scopes=["a"], extra={name: "evil"}
        )


async def test_extra_parameter_values_must_be_printable() -> None:
    server, _ = server_with(Recorder(lambda r: _token()), metadata=metadata(), use_par=False)
    with pytest.raises(ConfigurationError, match="printable"):
        await server.start_authorization(
            redirect_uri="http://127.0.0.1:5000/cb", scopes=["a"], extra={"x": "a\r\nb"}
        )


async def test_profile_parameters_yield_to_explicit_arguments() -> None:
    profile = ProviderProfile(
        name="p", issuer=ISSUER, authorization_params={"prompt": "consent", "access_type": "x"}
    )
    server, _ = server_with(
        Recorder(lambda r: _token()), metadata=metadata(), profile=profile, use_par=False
    )
    _, url = await server.start_authorization(
        redirect_uri="http://127.0.0.1:5000/cb", scopes=["a"], prompt="login"
    )
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["prompt"] == "login"
    assert query["access_type"] == "x"


# --------------------------------------------------------------------------- JWK Set


def _jwks(*keys: ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) | {"use": "sig", "alg": "ES256"} for k in keys]}


async def test_id_token_with_an_unknown_kid_fetches_the_jwks_again_rate_limited() -> None:
    old, new = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    old.ensure_kid()
    new.ensure_kid()
    published = [_jwks(old)]
    recorder = Recorder(lambda r: httpx2.Response(200, json=published[-1]))
    server, _ = server_with(recorder, metadata=metadata(), jwks_refresh_interval=60.0)
    now = server.clock.time()

    def id_token(key: ECKey, nonce: str) -> SecretStr:
        claims = {"iss": ISSUER, "aud": "agent", "sub": "alice", "iat": int(now),
                  "exp": int(now) + 300, "nonce": nonce}  # fmt: skip
        header = {"alg": "ES256", "kid": key.kid}
        return SecretStr(jose_jwt.encode(header, claims, key))

    await server.validate_id_token(id_token(old, "n1"), nonce="n1", max_age=None)
    assert recorder.paths() == ["/jwks"]
    published.append(_jwks(old, new))  # the server rotated its keys
    claims = await server.validate_id_token(id_token(new, "n2"), nonce="n2", max_age=None)
    assert claims["sub"] == "alice"
    assert recorder.paths() == ["/jwks", "/jwks"]
    # an unknown kid again, within the interval: no third fetch (rate limit)
    stranger = ECKey.generate_key("P-256")
    stranger.ensure_kid()
    with pytest.raises(Exception, match="kid"):
        await server.validate_id_token(id_token(stranger, "n3"), nonce="n3", max_age=None)
    assert recorder.paths() == ["/jwks", "/jwks"]


# --------------------------------------------------------------------------- honest tokens


def _jwt_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("body", "requested", "scopes", "verified", "audience"),
    [
        ({"scope": "a b"}, ["a"], ("a", "b"), True, None),
        ({}, ["a"], ("a",), False, None),
        ({"_jwt": {"scope": "a c", "aud": "https://api"}}, ["a"], ("a", "c"), True, ("https://api",)),
        ({"_jwt": {"scp": ["a", "d"], "aud": ["x", "y"]}}, ["a"], ("a", "d"), True, ("x", "y")),
        ({"_jwt": {"aud": "https://api"}}, ["a"], ("a",), False, ("https://api",)),
    ],
)
def test_token_facts_report_what_the_token_carries(
    body: dict[str, Any],
    requested: list[str],
    scopes: tuple[str, ...],
    verified: bool,
    audience: tuple[str, ...] | None,
) -> None:
    claims = body.pop("_jwt", None)
    value = _jwt_token(claims) if claims is not None else "opaque-token"
    response = TokenResponse.model_validate(
        {"access_token": value, "token_type": "Bearer", **body}
    )
    assert token_facts(response, requested) == (scopes, verified, audience)


async def test_private_key_jwt_signs_with_an_algorithm_the_server_lists() -> None:
    """RFC 8414 §2 ``token_endpoint_auth_signing_alg_values_supported``: an RSA key signs
    with PS256 when that is all the server accepts."""
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048).as_dict(private=True)
    recorder = Recorder(lambda r: _token())
    server, _ = server_with(
        recorder,
        client_secret=None,
        private_key=key,
        metadata=metadata(
            token_endpoint_auth_methods_supported=["private_key_jwt"],
            token_endpoint_auth_signing_alg_values_supported=["PS256"],
        ),
    )
    await server.client_credentials(scopes=(), resource=None)
    assertion = dict(recorder.form())["client_assertion"]
    header = assertion.split(".")[0]
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    assert decoded["alg"] == "PS256"
