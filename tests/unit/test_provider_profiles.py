"""The provider profiles' request and response hooks, in isolation.

- each ``normalize_token_response``, fed anything (garbage bytes, random JSON objects with
  the members it looks at, form bodies, huge bodies, lone surrogates), then the standard
  parsing the server does, ends in a token response or a typed error of the SDK's tree,
  never another exception;
- the documented shapes each profile rewrites (sources cited per test);
- scope mapping for Entra, the JSON request body, metadata defaults, lazy exports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_identity.errors import (
    AgentIdentityError,
    InsecureURLError,
    InvalidClient,
    InvalidGrant,
    InvalidResponse,
    OAuthError,
)
from agent_identity.models import ServerMetadata, TokenResponse
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.token import parse_token_response
from agent_identity.providers import (
    STANDARD,
    ProviderProfile,
    atlassian,
    entra,
    entra_multi_tenant,
    github,
    google,
    notion,
    slack,
)
from agent_identity.providers._wire import form_object, json_request
from agent_identity.providers.entra import entra_granted_scopes, entra_scopes_for
from agent_identity.server import map_token_error

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

PROFILES: dict[str, ProviderProfile] = {
    "github": github(),
    "google": google(),
    "entra": entra(TENANT),
    "entra_multi_tenant": entra_multi_tenant(),
    "slack": slack(),
    "atlassian": atlassian(),
    "notion": notion(),
}


def parse_like_the_server(profile: ProviderProfile, response: HttpResponse) -> object:
    """What :meth:`AuthorizationServer.parse_token` does with a response: normalize, then
    the standard parser or the mapped error. Returns the token or the typed error."""
    try:
        normalized = profile.normalize_token_response(response)
        if normalized.status_code != 200:
            return map_token_error(
                normalized, grant_type="refresh_token", aliases=profile.error_aliases
            )
        return parse_token_response(normalized)
    except AgentIdentityError as exc:  # typed: fine
        return exc


# -- anything in, typed errors out -----------------------------------------------------------------

_KEYS = [
    "ok", "error", "error_description", "error_uri", "interval", "authed_user",
    "access_token", "token_type", "scope", "expires_in", "refresh_token", "object", "code",
    "message", "status", "id_token", "refresh_token_expires_in",
]  # fmt: skip
_SURROGATES = st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | _SURROGATES
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), _VALUES, max_size=8)
_STATUS = st.sampled_from([200, 201, 302, 400, 401, 403, 404, 429, 500, 503])


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


_BODIES = st.one_of(
    st.binary(max_size=300),
    _OBJECTS.map(_json),
    _VALUES.map(_json),
    st.dictionaries(st.sampled_from(_KEYS), st.text(max_size=20), max_size=6).map(
        lambda d: urlencode(d).encode()
    ),
    st.sampled_from(
        [
            b"access_token=a&access_token=b&token_type=bearer",  # repeated member
            b"access_token=%ED%A0%80&token_type=bearer",  # an encoded lone surrogate
            b'{"ok": true, "authed_user": {"access_token": "\\ud800", "token_type": "user"}}',
            b'{"access_token": "x", "token_type": "bearer", "scope": "\\udfff,repo"}',
            b'{"error": "bad_verification_code", "error": "x"}',  # duplicate member
            b"\xed\xa0\x80",  # CESU-8 surrogate: not UTF-8
            b'{"object": "error", "code": {"a": 1}, "message": 5}',
            b"error=incorrect_client_credentials&interval=99999999999999999999",
        ]
    ),
)


@pytest.mark.parametrize("name", sorted(PROFILES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=_STATUS, body=_BODIES)
def test_normalize_then_parse_raises_only_typed_errors(name: str, status: int, body: bytes) -> None:
    profile = PROFILES[name]
    outcome = parse_like_the_server(profile, HttpResponse(status, {}, body))
    assert isinstance(outcome, TokenResponse | AgentIdentityError), type(outcome)


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize(
    "body",
    [
        b"{" * 100_000 + b"}" * 100_000,  # absurd nesting
        _json({"access_token": "a" * 2_000_000, "token_type": "bearer", "scope": "x," * 100_000}),
        ("access_token=" + "b" * 2_000_000 + "&scope=" + "repo%2C" * 50_000).encode(),
        _json({"ok": False, "error": "e" * 1_000_000}),
    ],
    ids=["nesting", "huge-json", "huge-form", "huge-error"],
)
def test_normalize_huge_bodies(name: str, body: bytes) -> None:
    outcome = parse_like_the_server(PROFILES[name], HttpResponse(200, {}, body))
    assert isinstance(outcome, TokenResponse | AgentIdentityError)


# -- GitHub ----------------------------------------------------------------------------------------


def _github(status: int, body: bytes) -> object:
    return parse_like_the_server(PROFILES["github"], HttpResponse(status, {}, body))


def test_github_form_encoded_default_and_comma_scopes() -> None:
    """ "Authorizing OAuth apps": "By default, the response takes the following form:
    access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=repo%2Cgist&token_type=bearer"."""
    token = _github(
        200,
        b"access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=repo%2Cgist&token_type=bearer",
    )
    assert isinstance(token, TokenResponse)
    assert token.scopes == ("repo", "gist")
    assert token.token_type == "bearer"


def test_github_app_user_token_numbers_and_empty_scope() -> None:
    """ "Generating a user access token for a GitHub App": ``expires_in`` 28800,
    ``refresh_token_expires_in`` 15811200, ``scope`` "always an empty string" (not
    reported: no scopes are claimed)."""
    token = _github(
        200,
        b"access_token=ghu_x&expires_in=28800&refresh_token=ghr_y"
        b"&refresh_token_expires_in=15811200&scope=&token_type=bearer",
    )
    assert isinstance(token, TokenResponse)
    assert token.expires_in == 28800
    assert token.scope is None
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "ghr_y"


@pytest.mark.parametrize(
    ("body", "kind", "code", "status"),
    [
        (
            b'{"error":"incorrect_client_credentials","error_description":"The client_id and/or '
            b'client_secret passed are incorrect.","error_uri":"/apps/managing-oauth-apps/"}',
            InvalidClient,
            "incorrect_client_credentials",
            401,
        ),
        (
            b"error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired.",
            InvalidGrant,
            "bad_verification_code",
            400,
        ),
        (b'{"error":"redirect_uri_mismatch"}', InvalidGrant, "redirect_uri_mismatch", 400),
        (b'{"error":"bad_refresh_token"}', InvalidGrant, "bad_refresh_token", 400),
        (b'{"error":"unverified_user_email"}', OAuthError, "unverified_user_email", 400),
    ],
)
def test_github_errors_in_200(body: bytes, kind: type[Exception], code: str, status: int) -> None:
    """ "Troubleshooting OAuth app access token request errors" (JSON bodies; the device flow
    page: "a 200 status and an error"): typed errors, the raw code kept."""
    error = _github(200, body)
    assert type(error) is kind
    assert isinstance(error, OAuthError)
    assert error.error == code
    assert error.status_code == status


def test_github_asks_for_json() -> None:
    """ "Authorizing OAuth apps": ``Accept: application/json`` selects JSON."""
    request = HttpRequest(
        "POST", "https://github.com/login/oauth/access_token", {"Accept": "x"}, {}
    )
    prepared = PROFILES["github"].prepare_token_request(request)
    assert prepared.headers == {"accept": "application/json"}


# -- Slack -----------------------------------------------------------------------------------------


def _slack(status: int, body: dict[str, Any]) -> object:
    return parse_like_the_server(PROFILES["slack"], HttpResponse(status, {}, _json(body)))


def test_slack_authed_user_and_refresh_shapes() -> None:
    """ "Installing with OAuth": the user token under ``authed_user`` (``token_type``
    ``user``, comma-separated ``scope``); "Using token rotation": a refreshed user token at
    the top level with ``refresh_token`` and ``expires_in`` 43200."""
    code = _slack(
        200,
        {
            "ok": True,
            "access_token": "xoxb-bot",
            "token_type": "bot",
            "scope": "commands",
            "authed_user": {
                "id": "U1234",
                "scope": "chat:write,search:read",
                "access_token": "xoxp-user",
                "token_type": "user",
            },
        },
    )
    assert isinstance(code, TokenResponse)
    assert code.access_token.get_secret_value() == "xoxp-user"
    assert code.token_type == "Bearer"
    assert code.scopes == ("chat:write", "search:read")
    refreshed = _slack(
        200,
        {
            "ok": True,
            "access_token": "xoxe.xoxp-1-new",
            "token_type": "user",
            "scope": "search:read",
            "refresh_token": "xoxe-1-new",
            "expires_in": 43200,
        },
    )
    assert isinstance(refreshed, TokenResponse)
    assert refreshed.expires_in == 43200
    assert refreshed.refresh_token is not None


def test_slack_bot_token_is_never_the_users() -> None:
    """ "the shape of the OAuth access response now puts bot access tokens first": without
    ``authed_user.access_token`` there is no user token, and the bot token is not one."""
    error = _slack(
        200,
        {"ok": True, "access_token": "xoxb-bot", "token_type": "bot", "authed_user": {"id": "U1"}},
    )
    assert isinstance(error, InvalidResponse)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("invalid_code", InvalidGrant),
        ("invalid_refresh_token", InvalidGrant),
        ("bad_redirect_uri", InvalidGrant),
        ("bad_client_secret", InvalidClient),
        ("invalid_client_id", InvalidClient),
        ("ratelimited", OAuthError),
    ],
)
def test_slack_ok_false(error: str, kind: type[Exception]) -> None:
    """``oauth.v2.access`` reference, Errors: HTTP 200 ``{"ok": false, "error": ...}``."""
    outcome = _slack(200, {"ok": False, "error": error})
    assert type(outcome) is kind
    assert isinstance(outcome, OAuthError)
    assert outcome.error == error


# -- Notion, Atlassian -----------------------------------------------------------------------------


def test_notion_api_error_shape() -> None:
    """Notion "Status codes": ``{"object": "error", "status": 400, "code": "invalid_grant",
    "message": "Invalid code: this code has been revoked."}``."""
    body = {
        "object": "error",
        "status": 400,
        "code": "invalid_grant",
        "message": "Invalid code: this code has been revoked.",
    }
    error = parse_like_the_server(PROFILES["notion"], HttpResponse(400, {}, _json(body)))
    assert isinstance(error, InvalidGrant)
    assert error.error_description == body["message"]
    unauthorized = {
        "object": "error",
        "status": 401,
        "code": "unauthorized",
        "message": "API token is invalid.",
    }
    error = parse_like_the_server(PROFILES["notion"], HttpResponse(401, {}, _json(unauthorized)))
    assert isinstance(error, InvalidClient)
    assert error.error == "unauthorized"


def test_notion_token_without_scope_or_expiry() -> None:
    """Notion "Create a token": ``access_token``, ``token_type``, ``refresh_token``,
    ``bot_id``, ``workspace_*``, ``owner``; no ``scope`` nor ``expires_in``."""
    body = {
        "access_token": "ntn_x",
        "token_type": "bearer",
        "refresh_token": "r",
        "bot_id": "b",
        "owner": {"type": "user"},
    }
    token = parse_like_the_server(PROFILES["notion"], HttpResponse(200, {}, _json(body)))
    assert isinstance(token, TokenResponse)
    assert token.scope is None
    assert token.expires_in is None


def test_atlassian_supplies_the_missing_token_type() -> None:
    """Atlassian "OAuth 2.0 (3LO) apps": the token response documents ``access_token``,
    ``expires_in``, ``scope`` (no ``token_type``)."""
    body = {"access_token": "a", "expires_in": 3600, "scope": "read:jira-work offline_access"}
    token = parse_like_the_server(PROFILES["atlassian"], HttpResponse(200, {}, _json(body)))
    assert isinstance(token, TokenResponse)
    assert token.token_type == "Bearer"
    assert PROFILES["atlassian"].normalize_token_response(
        HttpResponse(200, {}, _json({"x": 1}))
    ).content == _json({"x": 1})


def test_json_request_body() -> None:
    """Atlassian and Notion document JSON token request bodies."""
    request = HttpRequest(
        "POST",
        "https://auth.atlassian.com/oauth/token",
        {"Content-Type": "application/x-www-form-urlencoded", "authorization": "Basic x"},
        {"grant_type": "refresh_token", "resource": ["a", "b"]},
    )
    prepared = json_request(request)
    assert prepared.form is None
    assert prepared.body is not None
    assert json.loads(prepared.body) == {"grant_type": "refresh_token", "resource": ["a", "b"]}
    assert prepared.headers == {"authorization": "Basic x", "content-type": "application/json"}
    assert "refresh_token" not in repr(prepared)


def test_form_object_refuses_repeats_and_bad_encodings() -> None:
    def form(body: bytes) -> dict[str, str] | None:
        return form_object(HttpResponse(200, {}, body))

    assert form(b"a=1&b=2") == {"a": "1", "b": "2"}
    assert form(b"a=1&a=2") is None
    assert form(b"a=%ED%A0%80") is None
    assert form(b"\xff=1") is None
    assert form(b"") is None
    assert form(b"plain text") is None
    assert form(b"&".join(b"k%d=v" % i for i in range(65))) is None


# -- Entra -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "scopes", "wire"),
    [
        ("https://graph.microsoft.com", ["User.Read"], ["https://graph.microsoft.com/User.Read"]),
        (
            "https://graph.microsoft.com/",
            ["Mail.Read", "openid"],
            ["https://graph.microsoft.com/Mail.Read", "openid"],
        ),
        ("https://graph.microsoft.com", [], ["https://graph.microsoft.com/.default"]),
        (
            "https://graph.microsoft.com",
            ["offline_access"],
            ["offline_access", "https://graph.microsoft.com/.default"],
        ),
        ("https://graph.microsoft.com", ["api://guid/access"], ["api://guid/access"]),
        (
            None,
            ["https://graph.microsoft.com/User.Read"],
            ["https://graph.microsoft.com/User.Read"],
        ),
    ],
)
def test_entra_scopes_for(resource: str | None, scopes: list[str], wire: list[str]) -> None:
    """Auth code flow / "Scopes and permissions": ``{resource}/{scope}``, ``/.default``;
    v2.0 takes no ``resource`` parameter."""
    assert entra_scopes_for(resource, scopes) == (None, tuple(wire))


def test_entra_granted_scopes_back_to_short_names() -> None:
    graph = "https://graph.microsoft.com"
    assert (
        entra_granted_scopes(graph, f"{graph}/User.Read {graph}/Mail.Read openid")
        == "User.Read Mail.Read openid"
    )
    assert entra_granted_scopes(graph, "User.Read profile") == "User.Read profile"  # already short
    assert entra_granted_scopes(None, f"{graph}/User.Read") == f"{graph}/User.Read"
    assert entra_granted_scopes(graph, f"{graph}/") == f"{graph}/"


def test_entra_multi_tenant_id_token_issuer() -> None:
    """ "Access tokens", Validate the issuer, Multi-tenant applications: ``tid`` a GUID,
    ``iss`` exactly ``https://login.microsoftonline.com/{tid}/v2.0``."""
    hook = entra_multi_tenant().id_token_issuer
    assert hook is not None
    assert hook({"tid": TENANT}) == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    for tid in (None, 5, "", "x/../y", TENANT.upper() + "x", "common", TENANT + "/v2.0"):
        assert hook({"tid": tid}) is None
    only = entra_multi_tenant(tenants=[TENANT]).id_token_issuer
    assert only is not None
    assert only({"tid": "9122040d-6c67-4c5b-b112-36a304b66dad"}) is None


def test_metadata_defaults_fill_only_what_is_missing() -> None:
    profile = PROFILES["entra"]
    discovered = ServerMetadata(issuer="https://as")
    assert profile.complete_metadata(discovered).code_challenge_methods_supported == ("S256",)
    listed = ServerMetadata(issuer="https://as", code_challenge_methods_supported=("plain",))
    assert profile.complete_metadata(listed).code_challenge_methods_supported == ("plain",)
    assert STANDARD.complete_metadata(discovered) is discovered


# -- the package -----------------------------------------------------------------------------------


def test_lazy_exports() -> None:
    import agent_identity.providers as providers

    for name in ("github", "google", "entra", "entra_multi_tenant", "slack", "atlassian", "notion"):
        assert name in providers.__all__
        assert name in dir(providers)
        factory: Callable[..., ProviderProfile] = getattr(providers, name)
        assert callable(factory)
    with pytest.raises(AttributeError):
        providers.no_such_provider  # noqa: B018


def test_package_attribute_is_the_factory_whatever_was_imported_first() -> None:
    """Importing ``agent_identity.providers.entra`` (for ``entra_scopes_for``) binds, by the
    import system's rule, the module to the package attribute ``entra``; the package keeps
    the factory there instead. Run in a fresh interpreter: import order matters."""
    import subprocess
    import sys

    code = (
        "from agent_identity.providers import entra_multi_tenant\n"
        "from agent_identity.providers.github import normalize_github_response\n"
        "import agent_identity.providers as p\n"
        "from agent_identity.providers import entra, github\n"
        "assert callable(entra) and entra.__name__ == 'entra', entra\n"
        "assert callable(github) and github.__name__ == 'github', github\n"
        "print(entra('72f988bf-86f1-41af-91ab-2d7cd011db47').name, github().name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["entra", "github"]


def test_profiles_are_configuration_checked() -> None:
    with pytest.raises(InsecureURLError):
        github(base_url="http://github.example")
    with pytest.raises(InsecureURLError):
        entra(TENANT, authority="http://login.example")
    for profile in PROFILES.values():
        assert profile.name in repr(profile)
        assert "secret" not in repr(profile)
