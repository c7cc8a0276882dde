"""GitHub: OAuth apps, and GitHub Apps acting for a user (user access tokens).

What GitHub documents, and what this profile does with it (sources: the GitHub Docs pages
"Authorizing OAuth apps", "Generating a user access token for a GitHub App", "Refreshing
user access tokens", "Troubleshooting OAuth app access token request errors", and the
GitHub changelog "PKCE support for OAuth and GitHub App authentication", 2025-07-14):

- **No discovery**: the endpoints are fixed (``/login/oauth/authorize``,
  ``/login/oauth/access_token``, ``/login/device/code``): static metadata. GitHub is not an
  OpenID provider: no ID token, no ``issuer``; ``https://github.com`` names the provider.
- **PKCE**: supported since 2025-07-14, "Only the S256 code challenge method is accepted"
  (changelog). Older pages of "Authorizing OAuth apps" (and GitHub Enterprise Server
  releases before that) say PKCE is *not supported*: for such a server the profile is
  wrong, and the SDK cannot run the authorization code flow there without PKCE.
- **Response format**: "By default, the response takes the following form"
  ``access_token=...&scope=repo%2Cgist&token_type=bearer``; ``Accept: application/json``
  gives JSON ("Authorizing OAuth apps", step 2). The profile asks for JSON and still reads
  the form-encoded default.
- **Scopes** are requested space-delimited and reported comma-separated (``repo,gist``);
  a GitHub App's user token reports ``scope`` "always an empty string" (it has
  permissions, not scopes): it is then treated as not reported, and the token is labelled
  with the requested scopes, unverified.
- **Errors**: documented as JSON bodies (``incorrect_client_credentials``,
  ``redirect_uri_mismatch``, ``bad_verification_code``, ``unverified_user_email``);
  the device flow says "GitHub will respond with a 200 status and an error" while
  pending. Any body with ``error`` is an error, whatever the status; GitHub's codes are
  aliased to the standard ones (the raw code is kept on the typed error).
  ``bad_refresh_token`` is not on GitHub's pages; it is what GitHub answers a dead refresh
  token with (GitHub community discussion #24745), aliased to ``invalid_grant``.
- **Refresh**: only GitHub Apps with expiring user tokens get ``refresh_token`` (with
  ``expires_in`` 28800 and ``refresh_token_expires_in``); "Once you use a refresh token,
  that refresh token and the old user access token will no longer work" (rotation). The
  refresh request takes no ``scope``: refreshes are never narrowed. OAuth apps get no
  refresh token and no ``expires_in`` (tokens without expiry).
- **Not supported by GitHub, so never sent or used**: RFC 8707 ``resource``, RFC 7009
  revocation (GitHub revokes through its REST API, ``DELETE
  /applications/{client_id}/grant``, with Basic authentication: not an OAuth endpoint, not
  done here), token exchange, client credentials.
- **Client authentication**: ``client_id`` and ``client_secret`` as body parameters
  (``client_secret_post``); the device flow needs no secret (public client).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.urls import check_endpoint_url
from agent_identity.providers._profile import ProviderProfile
from agent_identity.providers._wire import (
    error_response,
    form_object,
    json_object,
    rewritten,
    space_separated,
)

__all__ = ["github", "normalize_github_response", "prepare_github_request"]

DOCUMENTATION = (
    "GitHub Docs: Authorizing OAuth apps; Generating a user access token for a GitHub App; "
    "Refreshing user access tokens; Troubleshooting OAuth app access token request errors; "
    "changelog 2025-07-14 'PKCE support for OAuth and GitHub App authentication'"
)

#: GitHub's error codes and the RFC 6749 / RFC 8628 codes they mean.
ERROR_ALIASES = {
    "incorrect_client_credentials": "invalid_client",
    "bad_verification_code": "invalid_grant",
    "redirect_uri_mismatch": "invalid_grant",
    "bad_refresh_token": "invalid_grant",
    "incorrect_device_code": "invalid_grant",
    "token_expired": "expired_token",  # the device flow page names both spellings
    "device_flow_disabled": "unauthorized_client",
}

_NUMBERS = ("expires_in", "refresh_token_expires_in", "interval")


def prepare_github_request(request: HttpRequest) -> HttpRequest:
    """Ask for JSON (``Accept: application/json``, "Authorizing OAuth apps" step 2)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "accept"}
    headers["accept"] = "application/json"
    return dataclasses.replace(request, headers=headers)


def normalize_github_response(response: HttpResponse) -> HttpResponse:
    """A GitHub token (or device code) endpoint response as RFC 6749 §5 says it:

    - a JSON or form-encoded body with ``error`` becomes a JSON error response with a 4xx
      status (``401`` for ``incorrect_client_credentials``), whatever status it came with;
    - a successful form-encoded body becomes JSON, its numbers integers;
    - a comma-separated ``scope`` becomes space-separated; an empty one is dropped.

    A body that is neither JSON nor a form is passed on unchanged (the standard parser
    reports it)."""
    body: dict[str, Any] | None = json_object(response)
    from_form = False
    if body is None:
        form = form_object(response)
        if form is None:
            return response
        body, from_form = dict(form), True
    error = body.get("error")
    if isinstance(error, str) and error:
        status = 401 if error == "incorrect_client_credentials" else 400
        return error_response(response, body, status=status)
    if response.status_code != 200:
        return rewritten(response, response.status_code, body) if from_form else response
    out = dict(body)
    if from_form:
        for name in _NUMBERS:
            value = out.get(name)
            if isinstance(value, str) and value.isdigit() and len(value) < 10:
                out[name] = int(value)
    if "scope" in out:
        scope = space_separated(out["scope"])
        if scope is None:
            del out["scope"]  # a GitHub App token's scope is "always an empty string"
        else:
            out["scope"] = scope
    if not from_form and out == body:
        return response
    return rewritten(response, 200, out)


def github(*, base_url: str = "https://github.com") -> ProviderProfile:
    """The GitHub profile (OAuth apps and GitHub Apps' user access tokens).

    ``base_url`` is the GitHub host, for GitHub Enterprise Server
    (``https://HOSTNAME``; its release must support PKCE S256)."""
    check_endpoint_url(base_url, allow_insecure_loopback=False, what="GitHub base URL")
    base = base_url.rstrip("/")
    metadata = ServerMetadata(
        issuer=base,
        authorization_endpoint=f"{base}/login/oauth/authorize",
        token_endpoint=f"{base}/login/oauth/access_token",
        device_authorization_endpoint=f"{base}/login/device/code",
        response_types_supported=("code",),
        grant_types_supported=(
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
        ),
        token_endpoint_auth_methods_supported=("client_secret_post", "none"),
        code_challenge_methods_supported=("S256",),
    )
    return ProviderProfile(
        name="github",
        issuer=base,
        metadata=metadata,
        documentation=DOCUMENTATION,
        prepare_token_request=prepare_github_request,
        normalize_token_response=normalize_github_response,
        scope_separator=" ",
        resource_indicators=False,
        error_aliases=ERROR_ALIASES,
        offline_access_scope=False,
        narrow_refresh=False,
    )
