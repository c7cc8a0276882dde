"""Helpers shared by the provider profiles to rewrite deviant token endpoint responses.

A profile's ``normalize_token_response`` turns what a provider documents into what
RFC 6749 §5.1/§5.2 says, so that the standard parser (and its typed errors) handles the
rest. Every helper here is total on untrusted input: a body it cannot read is reported as
``None`` and the response is passed on unchanged, so the standard parser raises its typed
:class:`~agent_identity.errors.InvalidResponse`; nothing here raises anything else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from agent_identity.errors import InvalidResponse
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse

__all__ = [
    "ERROR_MEMBERS",
    "error_response",
    "form_object",
    "json_object",
    "json_request",
    "rewritten",
    "space_separated",
]

#: The members of an RFC 6749 §5.2 error response (plus RFC 8628 §3.5's ``interval``).
ERROR_MEMBERS = ("error", "error_description", "error_uri", "interval")

_MAX_FORM_FIELDS = 64


def json_object(response: HttpResponse) -> dict[str, Any] | None:
    """The body as a strict JSON object (security item 4), or ``None``."""
    try:
        return parse_json_object(response.content, what="token response")
    except InvalidResponse:
        return None


def form_object(response: HttpResponse) -> dict[str, str] | None:
    """The body as ``application/x-www-form-urlencoded`` single-valued members, or
    ``None`` (not UTF-8, malformed, repeated or too many members)."""
    try:
        text = response.content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or "=" not in text:
        return None
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=_MAX_FORM_FIELDS,
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError):
        return None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in found:
            return None  # repeated member: refuse, like duplicate JSON members
        found[name] = value
    return found


def rewritten(response: HttpResponse, status: int, body: Mapping[str, Any]) -> HttpResponse:
    """``response`` with ``status`` and ``body`` as its JSON content."""
    headers = {k: v for k, v in response.headers.items() if k != "content-type"}
    headers["content-type"] = "application/json"
    content = json.dumps(dict(body), ensure_ascii=True, allow_nan=False).encode("ascii")
    return HttpResponse(status, headers, content)


def error_response(
    response: HttpResponse, body: Mapping[str, Any], *, status: int = 400
) -> HttpResponse:
    """An RFC 6749 §5.2 error response carrying ``body``'s error members (strings, and the
    integer ``interval`` of RFC 8628 ``slow_down``); ``status`` replaces a 2xx status."""
    kept: dict[str, Any] = {}
    for name in ERROR_MEMBERS:
        value = body.get(name)
        if name == "interval":
            if isinstance(value, int) and not isinstance(value, bool):
                kept[name] = value
            elif isinstance(value, str) and value.isdigit() and len(value) < 10:
                kept[name] = int(value)
        elif isinstance(value, str):
            kept[name] = value
    code = status if response.status_code < 400 else response.status_code
    return rewritten(response, code, kept)


def space_separated(value: object, separator: str = ",") -> str | None:
    """A ``separator``-separated scope string as RFC 6749 §3.3's space-separated one;
    ``None`` when it is not a string or names no scope."""
    if not isinstance(value, str):
        return None
    scopes = [s.strip() for s in value.replace(separator, " ").split()]
    scopes = [s for s in scopes if s]
    return " ".join(scopes) if scopes else None


def json_request(request: HttpRequest) -> HttpRequest:
    """``request`` with its form sent as a JSON object (``Content-Type:
    application/json``) instead of ``application/x-www-form-urlencoded``. Repeated form
    members (``resource``) become JSON arrays."""
    if request.form is None:
        return request
    body: dict[str, Any] = {}
    for name, value in request.form.items():
        body[name] = value if isinstance(value, str) else list(value)
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
    headers["content-type"] = "application/json"
    content = json.dumps(body, ensure_ascii=True).encode("ascii")
    return dataclasses.replace(request, form=None, body=content, headers=headers)
