"""RFC 9728 protected resource metadata: URL building and document validation
(security items 5 and 6)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_identity.errors import AgentIdentityError, InvalidResponse, MetadataError
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.resource_metadata import (
    legacy_default_metadata,
    legacy_metadata_url,
    parse_legacy_metadata,
    parse_resource_metadata,
    resource_metadata_candidates,
    resource_metadata_request,
    resource_metadata_urls,
)

MCP = "https://tools.example.com/mcp"


def _doc(**overrides: Any) -> HttpResponse:
    body: dict[str, Any] = {
        "resource": MCP,
        "authorization_servers": ["https://as.example.com"],
        "scopes_supported": ["tools.read"],
    }
    body.update(overrides)
    return HttpResponse(200, {}, json.dumps(body).encode())


def test_sec_05_path_inserted_then_root_well_known() -> None:
    assert resource_metadata_urls(MCP) == [
        "https://tools.example.com/.well-known/oauth-protected-resource/mcp",
        "https://tools.example.com/.well-known/oauth-protected-resource",
    ]
    assert resource_metadata_urls("https://tools.example.com") == [
        "https://tools.example.com/.well-known/oauth-protected-resource"
    ]
    assert resource_metadata_urls("https://Tools.Example.com:443/a/b/") == [
        "https://tools.example.com/.well-known/oauth-protected-resource/a/b",
        "https://tools.example.com/.well-known/oauth-protected-resource",
    ]


def test_sec_02_metadata_requests_are_server_supplied() -> None:
    request = resource_metadata_request(resource_metadata_urls(MCP)[0])
    assert request.server_supplied
    assert request.idempotent
    assert request.method == "GET"


def test_sec_06_resource_must_equal_the_server_url() -> None:
    parsed = parse_resource_metadata(_doc(), resource=MCP)
    assert parsed is not None
    assert parsed.authorization_servers == ("https://as.example.com",)
    assert parsed.scopes_supported == ("tools.read",)
    # case of scheme/host and a default port make no difference
    assert parse_resource_metadata(_doc(resource="HTTPS://TOOLS.example.com:443/mcp"), resource=MCP)
    for other in (
        "https://tools.example.com/mcp/",
        "https://tools.example.com/other",
        "https://evil.example.com/mcp",
        "https://tools.example.com:8443/mcp",
        "not a url",
    ):
        with pytest.raises(MetadataError):
            parse_resource_metadata(_doc(resource=other), resource=MCP)


def test_sec_05_06_candidates_and_the_resource_each_may_name() -> None:
    origin = "https://tools.example.com"
    assert resource_metadata_candidates(MCP) == [
        ("https://tools.example.com/.well-known/oauth-protected-resource/mcp", (MCP,)),
        (
            "https://tools.example.com/.well-known/oauth-protected-resource",
            (origin, f"{origin}/", MCP),
        ),
    ]
    named = "https://tools.example.com/custom.json"
    assert resource_metadata_candidates(MCP, named=named)[0] == (named, (MCP,))
    # the named URL is not tried twice
    root = "https://tools.example.com/.well-known/oauth-protected-resource"
    assert [u for u, _ in resource_metadata_candidates(MCP, named=root)] == [
        root,
        "https://tools.example.com/.well-known/oauth-protected-resource/mcp",
    ]
    assert resource_metadata_candidates(MCP, named=root)[0] == (root, (MCP,))


def test_sec_06_root_document_names_the_origin() -> None:
    """RFC 9728 §3.3: the identifier the well-known suffix was inserted into."""
    accepted = dict(resource_metadata_candidates(MCP))[
        "https://tools.example.com/.well-known/oauth-protected-resource"
    ]
    for resource in ("https://tools.example.com", "https://tools.example.com/", MCP):
        parsed = parse_resource_metadata(_doc(resource=resource), resource=accepted)
        assert parsed is not None
    for other in ("https://tools.example.com/other", "https://evil.example.com"):
        with pytest.raises(MetadataError):
            parse_resource_metadata(_doc(resource=other), resource=accepted)
    # a document named in a challenge, or at the path-inserted location: exactly the URL
    with pytest.raises(MetadataError):
        parse_resource_metadata(_doc(resource="https://tools.example.com"), resource=MCP)


def _metadata_response(**body: Any) -> HttpResponse:
    return HttpResponse(200, {}, json.dumps(body).encode())


def test_2025_03_26_metadata_at_the_origin() -> None:
    assert legacy_metadata_url(MCP) == (
        "https://tools.example.com/.well-known/oauth-authorization-server"
    )
    assert legacy_metadata_url("https://Tools.example.com:443/a/b?x=1") == (
        "https://tools.example.com/.well-known/oauth-authorization-server"
    )
    endpoints = {
        "authorization_endpoint": "https://tools.example.com/oauth/authorize",
        "token_endpoint": "https://tools.example.com/oauth/token",
    }
    found = parse_legacy_metadata(
        _metadata_response(issuer="https://tools.example.com/oauth", **endpoints), resource=MCP
    )
    assert found is not None
    assert found.issuer == "https://tools.example.com/oauth"
    assert parse_legacy_metadata(HttpResponse(404), resource=MCP) is None
    # an issuer on another origin is not the MCP server's to vouch for
    with pytest.raises(MetadataError, match="another origin"):
        parse_legacy_metadata(
            _metadata_response(issuer="https://as.example.com", **endpoints), resource=MCP
        )
    with pytest.raises(MetadataError, match="another origin"):
        parse_legacy_metadata(
            _metadata_response(issuer="http://tools.example.com", **endpoints), resource=MCP
        )
    with pytest.raises(InvalidResponse):
        parse_legacy_metadata(_metadata_response(token_endpoint="x"), resource=MCP)
    # endpoints are checked as for any metadata (security item 1)
    with pytest.raises(MetadataError):
        parse_legacy_metadata(
            _metadata_response(
                issuer="https://tools.example.com",
                token_endpoint="http://tools.example.com/token",
            ),
            resource=MCP,
        )


def test_2025_03_26_default_endpoints() -> None:
    metadata = legacy_default_metadata(MCP)
    assert metadata.issuer == "https://tools.example.com"
    assert metadata.authorization_endpoint == "https://tools.example.com/authorize"
    assert metadata.token_endpoint == "https://tools.example.com/token"
    assert metadata.registration_endpoint == "https://tools.example.com/register"
    assert metadata.code_challenge_methods_supported == ("S256",)


def test_sec_05_missing_document_means_try_the_next_url() -> None:
    for status in (404, 400, 405, 410):
        assert parse_resource_metadata(HttpResponse(status), resource=MCP) is None
    with pytest.raises(InvalidResponse):
        parse_resource_metadata(HttpResponse(500), resource=MCP)


def test_malformed_documents_are_refused() -> None:
    with pytest.raises(MetadataError):
        parse_resource_metadata(_doc(authorization_servers=[]), resource=MCP)
    with pytest.raises(InvalidResponse):
        parse_resource_metadata(_doc(authorization_servers="https://as"), resource=MCP)
    with pytest.raises(InvalidResponse):
        parse_resource_metadata(_doc(scopes_supported=[1]), resource=MCP)
    with pytest.raises(InvalidResponse):
        parse_resource_metadata(_doc(resource=None), resource=MCP)
    with pytest.raises(InvalidResponse):
        parse_resource_metadata(
            HttpResponse(200, {}, b'{"resource": "a", "resource": "b"}'), resource=MCP
        )


@given(st.binary(max_size=300))
def test_garbage_gives_a_typed_error_or_nothing(content: bytes) -> None:
    with contextlib.suppress(AgentIdentityError):
        parse_resource_metadata(HttpResponse(200, {}, content), resource=MCP)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6))
def test_arbitrary_members_give_a_typed_error_or_a_document(body: dict[str, str]) -> None:
    with contextlib.suppress(AgentIdentityError):
        parse_resource_metadata(HttpResponse(200, {}, json.dumps(body).encode()), resource=MCP)
