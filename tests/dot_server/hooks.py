"""Test hooks of the DEV ONLY DOT server: request log, quirk toggles, grant revocation.

Nothing here exists in a real deployment. Everything under ``/dev/`` answers loopback
clients only (``403`` otherwise) and is CSRF-exempt JSON:

- ``GET /dev/health``: also ``subjects`` (login -> the ID token ``sub``);
- ``GET|DELETE /dev/requests``: the token, revocation, introspection and device
  authorization requests since the last clear. Each entry holds the ``path``, ``route``,
  ``grant_type``, ``scope``, ``resource`` values, ``client_id``, the client authentication
  method the request used (``client_auth``), the ``assertion_audience`` of a client
  assertion, the names (never the values) of the secret-bearing fields present
  (``secret_fields``) and the final ``status``;
- ``GET|POST /dev/quirks`` (``name``, ``on``): toggles that make this server behave like
  real non-compliant ones (see :data:`QUIRKS`);
- ``GET|POST /dev/assertion-audience`` (``value``): which ``aud`` the ``private_key_jwt``
  validator accepts: ``issuer``, ``token_endpoint`` or ``both``;
- ``POST /dev/users/<login>/revoke-grants``: revoke every token of a user server-side,
  as the user (DOT's "authorized tokens" page) or an administrator would.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

#: name -> what it reproduces.
QUIRKS: dict[str, str] = {
    # Several deployed servers answer a dead refresh token with 400 and no body at all.
    "refresh_invalid_grant_empty_body": "invalid_grant on refresh answered 400, empty body",
    # ...and a failed client authentication with 403 and a body that is no OAuth error
    # (the response of an authentication layer in front of the token endpoint).
    "client_auth_403": "invalid_client answered 403 with a non-OAuth JSON body",
    # RFC 6749 §3.3 lets a server issue other scopes than requested: this one ignores
    # ``scope`` on refresh and issues (and reports) the grant's full scope.
    "refresh_ignores_scope": "scope ignored on refresh; the grant's full scope issued",
    # RFC 6749 §5.1: ``scope`` is OPTIONAL when equal to the requested scope; this server
    # never sends it.
    "omit_scope": "scope omitted from every token response",
}

_AUDIENCE_MODES = ("issuer", "token_endpoint", "both")
_SECRET_FIELDS = (
    "client_secret",
    "client_assertion",
    "code",
    "code_verifier",
    "refresh_token",
    "device_code",
    "token",
    "password",
)
_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

_lock = threading.Lock()
_log: list[dict[str, Any]] = []
_quirks: dict[str, bool] = dict.fromkeys(QUIRKS, False)
_audience: list[str] = []


def quirk(name: str) -> bool:
    with _lock:
        return _quirks[name]


def assertion_audience() -> str:
    with _lock:
        if not _audience:
            _audience.append(str(settings.CONFIG.get("assertion_audience", "both")))
        return _audience[0]


def _routes() -> dict[str, str]:
    prefix = settings.ISSUER.split("://", 1)[1].split("/", 1)[1]  # "o"
    return {
        f"/{prefix}/token/": "token",
        f"/{prefix}/revoke_token/": "revocation",
        f"/{prefix}/introspect/": "introspection",
        f"/{prefix}/device-authorization/": "device_authorization",
    }


def _unverified_claims(assertion: str) -> dict[str, Any]:
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _describe(request: HttpRequest, route: str) -> dict[str, Any]:
    form = request.POST
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "route": route,
        "grant_type": form.get("grant_type"),
        "scope": form.get("scope"),
        "resource": form.getlist("resource"),
        "token_type_hint": form.get("token_type_hint"),
        "client_id": form.get("client_id"),
        "client_auth": None,
        "assertion_audience": None,
        "secret_fields": sorted(name for name in _SECRET_FIELDS if name in form),
        "at": time.time(),
    }
    authorization = request.headers.get("Authorization", "")
    if authorization:
        entry["secret_fields"] = sorted([*entry["secret_fields"], "authorization_header"])
    if authorization[:6].lower() == "basic ":
        entry["client_auth"] = "client_secret_basic"
        try:
            user = base64.b64decode(authorization[6:]).decode("utf-8").split(":", 1)[0]
            entry["client_id"] = unquote_plus(user)
        except (ValueError, binascii.Error):
            entry["client_id"] = None
    elif "client_assertion" in form:
        entry["client_auth"] = "private_key_jwt"
        claims = _unverified_claims(form["client_assertion"])
        entry["assertion_audience"] = claims.get("aud")
        entry["client_id"] = entry["client_id"] or claims.get("iss")
    elif "client_secret" in form:
        entry["client_auth"] = "client_secret_post"
    elif "client_id" in form:
        entry["client_auth"] = "none"
    return entry


def _json_of(response: HttpResponse) -> dict[str, Any] | None:
    if "json" not in response.get("Content-Type", ""):
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _apply_response_quirks(entry: dict[str, Any], response: HttpResponse) -> HttpResponse:
    route, status = entry["route"], response.status_code
    body = _json_of(response)
    error = body.get("error") if body is not None else None
    if (
        quirk("refresh_invalid_grant_empty_body")
        and route == "token"
        and entry["grant_type"] == "refresh_token"
        and status == 400
        and error == "invalid_grant"
    ):
        return HttpResponse(b"", status=400, content_type="text/plain")
    if quirk("client_auth_403") and status == 401 and error == "invalid_client":
        return JsonResponse({"detail": "Invalid client credentials."}, status=403)
    if quirk("omit_scope") and route == "token" and status == 200 and body is not None:
        body.pop("scope", None)
        rewritten = JsonResponse(body, status=200)
        for header in ("Cache-Control", "Pragma"):
            if header in response:
                rewritten[header] = response[header]
        return rewritten
    return response


class DevHooksMiddleware:
    """Logs the logged routes and applies the quirks; serves nothing itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.routes = _routes()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        route = self.routes.get(request.path)
        if route is None or request.method != "POST":
            return self.get_response(request)
        entry = _describe(request, route)
        if (
            quirk("refresh_ignores_scope")
            and route == "token"
            and entry["grant_type"] == "refresh_token"
            and "scope" in request.POST
        ):
            form = request.POST.copy()
            del form["scope"]
            request.POST = form  # DOT reads the form from request.POST
        response = _apply_response_quirks(entry, self.get_response(request))
        entry["status"] = response.status_code
        with _lock:
            _log.append(entry)
        return response


# --------------------------------------------------------------------------- /dev/ views


def _dev_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    from django.views.decorators.csrf import csrf_exempt

    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.META.get("REMOTE_ADDR") not in _LOOPBACK:
            return JsonResponse({"error": "forbidden"}, status=403)
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        return response

    return csrf_exempt(guarded)


@_dev_view
def health(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import get_user_model

    # ``subjects``: login -> the ``sub`` DOT puts in ID tokens (the user's primary key).
    users = get_user_model().objects.all()
    subjects = {user.get_username(): str(user.pk) for user in users}
    return JsonResponse(
        {"ok": True, "issuer": settings.ISSUER, "dev_only": True, "subjects": subjects}
    )


@_dev_view
def requests(request: HttpRequest) -> HttpResponse:
    if request.method == "DELETE":
        with _lock:
            _log.clear()
        return HttpResponse(status=204)
    with _lock:
        return JsonResponse(list(_log), safe=False)


@_dev_view
def quirks(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        name = request.POST.get("name", "")
        if name not in QUIRKS:
            return JsonResponse({"error": "unknown_quirk", "known": sorted(QUIRKS)}, status=400)
        with _lock:
            _quirks[name] = request.POST.get("on", "true").lower() in ("1", "true", "on", "yes")
    with _lock:
        return JsonResponse(dict(_quirks))


@_dev_view
def audience(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        value = request.POST.get("value", "")
        if value not in _AUDIENCE_MODES:
            return JsonResponse({"error": "unknown_mode", "known": _AUDIENCE_MODES}, status=400)
        assertion_audience()
        with _lock:
            _audience[0] = value
    return JsonResponse({"value": assertion_audience()})


@_dev_view
def revoke_grants(request: HttpRequest, login: str) -> HttpResponse:
    from django.contrib.auth import get_user_model
    from oauth2_provider.models import (
        get_access_token_model,
        get_refresh_token_model,
        revoke_access_token,
    )

    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    user = get_user_model().objects.filter(username=login).first()
    if user is None:
        return JsonResponse({"error": "unknown_login"}, status=404)
    access = list(get_access_token_model().objects.filter(user=user))
    for token in access:
        revoke_access_token(token)  # DOT's own path (authorized-tokens page, admin)
    refresh = list(get_refresh_token_model().objects.filter(user=user, revoked__isnull=True))
    for token in refresh:
        token.revoke()
    return JsonResponse({"access_tokens": len(access), "refresh_tokens": len(refresh)})
