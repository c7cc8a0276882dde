"""AS metadata discovery (agent_identity.oauth.discovery, RFC 8414): security items
1, 4, 8, 9 and 10."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidResponse,
    MetadataError,
)
from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.discovery import (
    ENDPOINT_FIELDS,
    metadata_request,
    metadata_urls,
    parse_metadata,
    require_s256,
)

ISSUER = "https://as.example/t1"


def _doc(issuer: str = ISSUER, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code"],
    }
    doc.update(extra)
    return doc


def _ok(body: Any) -> HttpResponse:
    return HttpResponse(200, {"content-type": "application/json"}, json.dumps(body).encode())


# --- security item 8: well-known URL order -------------------------------------------------


def test_sec_08_metadata_url_order_with_path() -> None:
    assert metadata_urls("https://as/t1") == [
        "https://as/.well-known/oauth-authorization-server/t1",
        "https://as/.well-known/openid-configuration/t1",
        "https://as/t1/.well-known/openid-configuration",
    ]


def test_sec_08_metadata_url_order_without_path() -> None:
    expected = [
        "https://as/.well-known/oauth-authorization-server",
        "https://as/.well-known/openid-configuration",
    ]
    assert metadata_urls("https://as") == expected
    assert metadata_urls("https://as/") == expected


def test_sec_08_trailing_slash_removed_before_inserting() -> None:
    # RFC 8414 §3.1: a terminating "/" is removed before the well-known segment is inserted.
    assert metadata_urls("https://as/t1/") == metadata_urls("https://as/t1")


def test_sec_08_deep_path_port_and_case_kept() -> None:
    assert metadata_urls("https://AS.example:8443/a/B") == [
        "https://AS.example:8443/.well-known/oauth-authorization-server/a/B",
        "https://AS.example:8443/.well-known/openid-configuration/a/B",
        "https://AS.example:8443/a/B/.well-known/openid-configuration",
    ]


@pytest.mark.parametrize(
    "issuer", ["as.example", "/t1", "", "https://as/t1?x=1", "https://as/t1#f", "https://"]
)
def test_sec_08_bad_issuer_refused(issuer: str) -> None:
    with pytest.raises(ConfigurationError):
        metadata_urls(issuer)


def test_metadata_request_is_an_idempotent_get() -> None:
    url = "https://as/.well-known/oauth-authorization-server/t1"
    request = metadata_request(url)
    assert request.method == "GET"
    assert request.url == url
    assert request.idempotent is True
    assert request.form is None


# --- parse_metadata: status handling ---------------------------------------------------------


def test_parse_metadata_success() -> None:
    metadata = parse_metadata(_ok(_doc()), issuer=ISSUER)
    assert isinstance(metadata, ServerMetadata)
    assert metadata.issuer == ISSUER
    assert metadata.token_endpoint == f"{ISSUER}/token"
    assert metadata.code_challenge_methods_supported == ("S256",)


@pytest.mark.parametrize("status", [400, 404, 405, 410])
def test_not_found_means_try_next(status: int) -> None:
    assert parse_metadata(HttpResponse(status, {}, b"<html>nope</html>"), issuer=ISSUER) is None


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403, 201, 204, 301, 302])
def test_other_status_is_invalid_response(status: int) -> None:
    with pytest.raises(InvalidResponse, match=str(status)):
        parse_metadata(HttpResponse(status, {}, json.dumps(_doc()).encode()), issuer=ISSUER)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"issuer": "https://as.example/t1"',  # truncated
        b'["https://as.example/t1"]',  # not an object
        b'{"issuer": "https://as.example/t1", "issuer": "https://evil"}',  # duplicate keys
        b"\xff\xfe{}",
    ],
)
def test_sec_04_malformed_document_is_invalid_response(content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_metadata(HttpResponse(200, {}, content), issuer=ISSUER)


@pytest.mark.parametrize(
    "doc",
    [
        {"token_endpoint": "https://as.example/t1/token"},  # no issuer
        _doc(issuer=7),  # type: ignore[arg-type]
        _doc(code_challenge_methods_supported="S256"),
        _doc(token_endpoint=["https://as.example/t1/token"]),
        _doc(authorization_response_iss_parameter_supported="yes please"),
    ],
)
def test_sec_04_mistyped_members_are_invalid_response(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse):
        parse_metadata(_ok(doc), issuer=ISSUER)


def test_sec_04_unknown_members_ignored() -> None:
    doc = _doc(
        x_vendor_feature={"nested": [1, 2, {"deep": None}]},
        frontchannel_logout_supported=True,
        another_unknown="https://evil.example/",
    )
    metadata = parse_metadata(_ok(doc), issuer=ISSUER)
    assert metadata is not None
    assert metadata.token_endpoint == f"{ISSUER}/token"
    assert not hasattr(metadata, "x_vendor_feature")


# --- security item 9: issuer identical --------------------------------------------------------


@pytest.mark.parametrize(
    "document_issuer",
    [
        "https://as.example/t1/",  # trailing slash
        "https://AS.example/t1",  # host case
        "https://as.example/T1",  # path case
        "HTTPS://as.example/t1",  # scheme case
        "https://as.example:443/t1",  # explicit default port
        "https://as.example:8443/t1",  # other port
        "https://as.example/t2",  # other path
        "https://as.example",  # no path
        "https://as.example/t1/sub",
        "http://as.example/t1",
        "https://evil.example/t1",
        " https://as.example/t1",
    ],
)
def test_sec_09_issuer_mismatch_refused(document_issuer: str) -> None:
    with pytest.raises(MetadataError, match="issuer"):
        parse_metadata(_ok(_doc(issuer=document_issuer)), issuer=ISSUER)


def test_sec_09_issuer_with_trailing_slash_must_match_exactly() -> None:
    issuer = "https://as.example/"
    metadata = parse_metadata(_ok(_doc(issuer=issuer)), issuer=issuer)
    assert metadata is not None
    assert metadata.issuer == issuer
    with pytest.raises(MetadataError):
        parse_metadata(_ok(_doc(issuer="https://as.example")), issuer=issuer)


# --- security item 1: endpoints must be https (loopback http only with the opt-in) ------------


def test_sec_01_http_token_endpoint_in_metadata_refused() -> None:
    doc = _doc(token_endpoint="http://as.example/t1/token")
    with pytest.raises(MetadataError, match="token_endpoint"):
        parse_metadata(_ok(doc), issuer=ISSUER)
    with pytest.raises(MetadataError, match="token_endpoint"):
        parse_metadata(_ok(doc), issuer=ISSUER, allow_insecure_loopback=True)


@pytest.mark.parametrize("field", ENDPOINT_FIELDS)
def test_sec_01_every_endpoint_field_checked(field: str) -> None:
    doc = _doc(**{field: "http://as.example/t1/endpoint"})
    with pytest.raises(MetadataError, match=field):
        parse_metadata(_ok(doc), issuer=ISSUER)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "data:text/html,hi",
        "https://user:pw@as.example/t1/token",
        "https://as.example/t1/token#frag",
        "/relative/token",
    ],
)
def test_sec_01_unusable_endpoint_urls_refused(url: str) -> None:
    with pytest.raises(MetadataError):
        parse_metadata(_ok(_doc(token_endpoint=url)), issuer=ISSUER)


def test_sec_01_loopback_http_accepted_only_with_opt_in() -> None:
    issuer = "http://127.0.0.1:8080"
    doc = _doc(issuer=issuer)
    with pytest.raises(MetadataError):
        parse_metadata(_ok(doc), issuer=issuer)
    metadata = parse_metadata(_ok(doc), issuer=issuer, allow_insecure_loopback=True)
    assert metadata is not None
    assert metadata.token_endpoint == "http://127.0.0.1:8080/token"


def test_sec_01_opt_in_does_not_allow_http_to_other_hosts() -> None:
    issuer = "http://127.0.0.1:8080"
    doc = _doc(issuer=issuer, token_endpoint="http://10.0.0.1/token")
    with pytest.raises(MetadataError, match="token_endpoint"):
        parse_metadata(_ok(doc), issuer=issuer, allow_insecure_loopback=True)


# --- security item 10: S256 must be advertised ------------------------------------------------


@pytest.mark.parametrize("methods", [None, [], ["plain"], ["s256"], ["plain", "S512"]])
def test_sec_10_no_s256_refused(methods: list[str] | None) -> None:
    doc = _doc()
    if methods is None:
        del doc["code_challenge_methods_supported"]
    else:
        doc["code_challenge_methods_supported"] = methods
    metadata = parse_metadata(_ok(doc), issuer=ISSUER)
    assert metadata is not None
    with pytest.raises(MetadataError, match="S256"):
        require_s256(metadata)


def test_sec_10_s256_accepted() -> None:
    metadata = parse_metadata(
        _ok(_doc(code_challenge_methods_supported=["plain", "S256"])), issuer=ISSUER
    )
    assert metadata is not None
    require_s256(metadata)


# --- hypothesis: untrusted documents ----------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_member_names = st.sampled_from(
    [
        "issuer",
        *ENDPOINT_FIELDS,
        "code_challenge_methods_supported",
        "scopes_supported",
        "grant_types_supported",
        "authorization_response_iss_parameter_supported",
        "require_pushed_authorization_requests",
        "x",
    ]
)
_documents = st.dictionaries(_member_names, _json_values | st.just(ISSUER), max_size=8)


def _only_typed_errors(response: HttpResponse) -> None:
    try:
        result = parse_metadata(response, issuer=ISSUER)
    except AgentIdentityError:
        return
    assert result is None or (isinstance(result, ServerMetadata) and result.issuer == ISSUER)


@given(_documents)
@settings(max_examples=200, deadline=None)
def test_sec_04_arbitrary_json_objects_only_typed_errors(doc: dict[str, Any]) -> None:
    _only_typed_errors(_ok(doc))


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_sec_04_arbitrary_bytes_only_typed_errors(content: bytes) -> None:
    _only_typed_errors(HttpResponse(200, {}, content))


@given(
    st.fixed_dictionaries(
        {"issuer": st.just(ISSUER)},
        optional={f: st.text(max_size=40) for f in ENDPOINT_FIELDS},
    )
)
@settings(max_examples=200, deadline=None)
def test_sec_01_accepted_endpoints_are_https(doc: dict[str, Any]) -> None:
    try:
        metadata = parse_metadata(_ok(doc), issuer=ISSUER)
    except AgentIdentityError:
        return
    assert metadata is not None
    for field in ENDPOINT_FIELDS:
        value = getattr(metadata, field)
        assert value is None or value.lower().startswith("https://")
