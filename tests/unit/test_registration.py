"""RFC 7591 dynamic registration and Client ID Metadata Documents (security items 12-14)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidRequest,
    InvalidResponse,
    VaultCorrupted,
)
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.registration import (
    ClientRegistration,
    application_type_for,
    check_client_id_url,
    client_metadata_document,
    parse_registration,
    registration_request,
    validate_client_metadata_document,
)

AS = "https://as.example.com"
CIMD = "https://agent.example.com/oauth/client.json"
CANARY = "canary-client-secret-0123456789"


def _response(status: int = 201, **body: Any) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps(body).encode())


def test_sec_14_application_type_native_for_loopback_else_web() -> None:
    assert application_type_for(["http://127.0.0.1/callback"]) == "native"
    assert application_type_for(["http://[::1]:8000/cb", "com.example.app:/cb"]) == "native"
    assert application_type_for(["https://agent.example.com/cb"]) == "web"
    assert application_type_for(["http://agent.example.com/cb"]) == "web"
    request = registration_request(
        f"{AS}/reg", redirect_uris=["http://127.0.0.1/callback"], client_name="agent"
    )
    body = json.loads(request.body or b"")
    assert body["application_type"] == "native"
    assert body["redirect_uris"] == ["http://127.0.0.1/callback"]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert request.server_supplied
    assert not request.idempotent
    assert request.headers["content-type"] == "application/json"
    web = registration_request(
        f"{AS}/reg", redirect_uris=["https://agent.example.com/cb"], client_name="agent"
    )
    assert json.loads(web.body or b"")["application_type"] == "web"


def test_sec_01_registration_endpoint_must_be_https() -> None:
    with pytest.raises(AgentIdentityError):
        registration_request("http://as.example.com/reg", redirect_uris=["x"], client_name="a")


def test_sec_14_client_secret_expires_at_is_honoured() -> None:
    forever = parse_registration(
        _response(client_id="c1", client_secret=CANARY, client_secret_expires_at=0), issuer=AS
    )
    assert not forever.expired(now=4e9)
    soon = parse_registration(
        _response(client_id="c1", client_secret=CANARY, client_secret_expires_at=1000), issuer=AS
    )
    assert soon.expired(now=990)
    assert not soon.expired(now=100)
    public = parse_registration(_response(client_id="c2"), issuer=AS)
    assert public.client_secret is None
    assert not public.expired(now=4e9)
    # a secret without its expiry does not expire: §3.2.1 requires the member, servers
    # omit it, and every other client reads it so (issue 11)
    unsaid = parse_registration(_response(client_id="c1", client_secret=CANARY), issuer=AS)
    assert unsaid.client_secret is not None
    assert unsaid.client_secret_expires_at == 0
    assert not unsaid.expired(now=4e9)
    # ...but a value that is there must be valid
    for bad in (-1, "soon", None, True, 1e400):
        with pytest.raises(InvalidResponse):
            parse_registration(
                _response(client_id="c1", client_secret=CANARY, client_secret_expires_at=bad),
                issuer=AS,
            )


def test_sec_14_registered_method_is_recorded_and_a_none_registration_has_no_secret() -> None:
    # the response's method, else the one requested (RFC 7591 §3.2.1)
    said = parse_registration(
        _response(
            client_id="c1", client_secret=CANARY, token_endpoint_auth_method="client_secret_post"
        ),
        issuer=AS,
        requested_method="client_secret_basic",
    )
    assert said.token_endpoint_auth_method == "client_secret_post"
    unsaid = parse_registration(
        _response(client_id="c1", client_secret=CANARY),
        issuer=AS,
        requested_method="client_secret_basic",
    )
    assert unsaid.token_endpoint_auth_method == "client_secret_basic"
    # a public client: a secret issued anyway is dropped, so it is never sent
    for response in (
        _response(client_id="c2", client_secret=CANARY),
        _response(client_id="c2", client_secret=CANARY, token_endpoint_auth_method="none"),
    ):
        public = parse_registration(response, issuer=AS, requested_method="none")
        assert public.token_endpoint_auth_method == "none"
        assert public.client_secret is None
        assert CANARY.encode() not in public.to_bytes()
    # a method this client cannot use, or a secret method without a secret
    with pytest.raises(InvalidResponse, match="cannot use"):
        parse_registration(
            _response(client_id="c3", token_endpoint_auth_method="private_key_jwt"), issuer=AS
        )
    with pytest.raises(InvalidResponse, match="no client_secret"):
        parse_registration(
            _response(client_id="c3", token_endpoint_auth_method="client_secret_basic"), issuer=AS
        )


def test_redirect_uri_registered() -> None:
    from agent_identity.oauth.registration import redirect_uri_registered

    loopback = ["http://127.0.0.1/callback"]
    assert redirect_uri_registered("http://127.0.0.1:53124/callback", loopback)
    assert redirect_uri_registered("http://127.0.0.1/callback", loopback)
    assert redirect_uri_registered("http://localhost:8080/cb", ["http://localhost/cb"])
    assert not redirect_uri_registered("http://127.0.0.1:53124/other", loopback)
    assert not redirect_uri_registered("http://127.0.0.1:1/callback?x=1", loopback)
    assert not redirect_uri_registered("http://10.0.0.1/callback", ["http://10.0.0.1:81/callback"])
    web = ["https://app.example.com/oauth/cb"]
    assert redirect_uri_registered("https://app.example.com/oauth/cb", web)
    assert redirect_uri_registered("https://APP.example.com/oauth/cb", web)
    assert not redirect_uri_registered("https://app.example.com:8443/oauth/cb", web)
    assert not redirect_uri_registered("https://app.example.com/oauth/cb#x", web)
    assert not redirect_uri_registered("https://evil.example.com/oauth/cb", web)
    assert not redirect_uri_registered("http://app.example.com/oauth/cb", web)
    assert not redirect_uri_registered("https://u:p@app.example.com/oauth/cb", web)
    assert not redirect_uri_registered("http://[::1", loopback)


def test_registration_errors_are_typed() -> None:
    with pytest.raises(InvalidRequest):
        parse_registration(_response(400, error="invalid_request"), issuer=AS)
    with pytest.raises(InvalidResponse):
        parse_registration(_response(201), issuer=AS)


def test_sec_12_registration_is_bound_to_its_issuer_and_hides_its_secret() -> None:
    registration = parse_registration(
        _response(client_id="c1", client_secret=CANARY, client_secret_expires_at=0), issuer=AS
    )
    assert registration.issuer == AS
    assert CANARY not in repr(registration)
    again = ClientRegistration.from_bytes(registration.to_bytes())
    assert again == registration
    with pytest.raises(VaultCorrupted):
        ClientRegistration.from_bytes(b"{}")


def test_sec_13_client_id_url_rules() -> None:
    assert check_client_id_url(CIMD) == CIMD
    for bad in (
        "http://agent.example.com/client.json",
        "https://agent.example.com",
        "https://agent.example.com/",
        "https://agent.example.com/a/../client.json",
        "https://agent.example.com/./client.json",
        "https://agent.example.com/client.json#frag",
        "https://user:pw@agent.example.com/client.json",
    ):
        with pytest.raises(AgentIdentityError):
            check_client_id_url(bad)


@pytest.mark.parametrize(
    "path",
    [
        "/a/%2e%2e/client.json",
        "/a/%2E%2E/client.json",
        "/a/.%2e/client.json",
        "/a/..%2fclient.json",
        "/a%2f..%2fclient.json",
        "/a%5c..%5cclient.json",
        "/a%2fclient.json",
        "/a/..;/client.json",
        "/a/%252e%252e/client.json",
        "/a/%zz/client.json",
        "/a/%2e/client.json",
    ],
)
def test_sec_13_client_id_url_without_encoded_dots_or_slashes(path: str) -> None:
    # RFC 3986 §6, §5.2.4 (issue 12 item 12): a server that decodes or normalises the
    # path must not fetch another document than the one the client id names.
    with pytest.raises(ConfigurationError):
        check_client_id_url(f"https://agent.example.com{path}")


def test_sec_13_client_id_url_with_harmless_escapes_is_kept() -> None:
    for path in ("/a%20b/client.json", "/clients/agent-1.json", "/a/.well-known/client"):
        url = f"https://agent.example.com{path}"
        assert check_client_id_url(url) == url


def test_sec_13_document_builder_and_validator() -> None:
    document = client_metadata_document(
        CIMD, client_name="Agent", redirect_uris=["http://127.0.0.1/callback"]
    )
    assert document["client_id"] == CIMD
    assert document["token_endpoint_auth_method"] == "none"
    assert document["application_type"] == "native"
    assert validate_client_metadata_document(document, client_id=CIMD) == document
    with pytest.raises(ConfigurationError):
        validate_client_metadata_document(
            {**document, "client_id": "https://other.example.com/c.json"}, client_id=CIMD
        )
    with pytest.raises(ConfigurationError):
        validate_client_metadata_document({**document, "client_name": ""}, client_id=CIMD)
    with pytest.raises(ConfigurationError):
        validate_client_metadata_document({**document, "redirect_uris": []}, client_id=CIMD)
    with pytest.raises(ConfigurationError):
        validate_client_metadata_document({**document, "client_secret": "x"}, client_id=CIMD)
    for method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
        with pytest.raises(ConfigurationError):
            validate_client_metadata_document(
                {**document, "token_endpoint_auth_method": method}, client_id=CIMD
            )


@given(st.binary(max_size=300), st.sampled_from([200, 201, 400, 500]))
def test_garbage_registration_responses_give_typed_errors(content: bytes, status: int) -> None:
    with contextlib.suppress(AgentIdentityError):
        parse_registration(HttpResponse(status, {}, content), issuer=AS)
