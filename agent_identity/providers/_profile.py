"""What a provider profile is: the documented deviations of one authorization server.

The protocol core (:mod:`agent_identity.oauth`, :mod:`agent_identity.server`) speaks the
standards. A :class:`ProviderProfile` tells it, through a few generic hooks, how one
provider deviates from them; every quirk lives in the profile's own module, never as a
special case in the core:

- ``metadata``: static endpoints for providers without RFC 8414 / OpenID discovery;
- ``authorization_params``: parameters every authorization request needs (Google's
  ``access_type=offline``);
- ``prepare_token_request`` / ``normalize_token_response``: rewrite a token endpoint
  request before it is sent, and its raw response before the standard parser sees it
  (GitHub's form-encoded answers and errors in ``200`` responses, Slack's ``ok: false``);
- ``scope_parameter``, ``scope_separator``: how scopes travel on the wire;
- ``resource_indicators``: ``False`` where the provider refuses RFC 8707 ``resource``;
- ``scopes_for``: map ``(resource, scopes)`` to the provider's own scope names (Microsoft
  Entra's ``https://graph.microsoft.com/User.Read``);
- ``error_aliases``: provider error codes that mean a standard one (the raw code is kept
  on the typed error);
- ``id_token_issuer``: the expected ``iss`` of an ID token when the issuer is a template
  (Entra's multi-tenant ``{tenantid}``);
- ``metadata_defaults``: documented facts that a provider's discovery document leaves out
  (Entra lists no ``code_challenge_methods_supported`` although it documents PKCE S256);
  members the discovered document does carry always win;
- ``granted_scopes``: map the ``scope`` of a token response back to the names the caller
  asked for (the inverse of ``scopes_for``: Entra answers
  ``https://graph.microsoft.com/User.Read`` for ``User.Read``);
- ``opaque_access_tokens``: the provider tells clients not to read its access tokens
  (Entra): scopes and audience come from the token response only, never from a JWT;
- ``authorization_code_refusal``: why the authorization code flow is refused at this
  provider (it documents no PKCE S256, security item 10); consent then fails with
  :class:`~agent_identity.errors.ConfigurationError` before any request.

A profile is a frozen dataclass: ``dataclasses.replace(profile, ...)`` adapts one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_identity.models import ServerMetadata
    from agent_identity.oauth._message import HttpRequest, HttpResponse

__all__ = ["STANDARD", "ProviderProfile"]


def _same_request(request: HttpRequest) -> HttpRequest:
    return request


def _same_response(response: HttpResponse) -> HttpResponse:
    return response


def _no_mapping(resource: str | None, scopes: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    return resource, tuple(scopes)


def _same_scope(resource: str | None, scope: str) -> str:
    return scope


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderProfile:
    """The deviations of one provider from the standards (see the module docstring).

    :param name: a short name (``"github"``), used in logs and audit records.
    :param issuer: the issuer identifier, or for providers without one the stable URL
        that identifies the provider (it names the vault connection by default).
    :param metadata: static metadata; ``None`` discovers ``issuer`` (RFC 8414 / OpenID).
    :param documentation: where the documented behaviour encoded here comes from.
    """

    name: str
    issuer: str
    metadata: ServerMetadata | None = None
    documentation: str = ""
    authorization_params: Mapping[str, str] = field(default_factory=dict)
    prepare_token_request: Callable[[HttpRequest], HttpRequest] = _same_request
    normalize_token_response: Callable[[HttpResponse], HttpResponse] = _same_response
    scope_parameter: str = "scope"
    scope_separator: str = " "
    resource_indicators: bool = True
    scopes_for: Callable[[str | None, Sequence[str]], tuple[str | None, tuple[str, ...]]] = (
        _no_mapping
    )
    error_aliases: Mapping[str, str] = field(default_factory=dict)
    id_token_issuer: Callable[[Mapping[str, Any]], str | None] | None = None
    #: Whether ``offline_access`` asks this provider for a refresh token (when it is not
    #: listed in ``scopes_supported``, it is never sent anyway).
    offline_access_scope: bool = True
    #: Whether refresh requests are narrowed with ``scope`` (RFC 6749 §6). ``False`` for
    #: providers that ignore it or that bind the rotated refresh token to the narrowed
    #: scope (losing the rest of the grant): tokens are then as broad as the grant and
    #: labelled with what they carry.
    narrow_refresh: bool = True
    #: The ``aud`` of ``private_key_jwt`` assertions this provider accepts, when the
    #: client does not choose (``"issuer"`` or ``"token_endpoint"``).
    assertion_audience: str = "issuer"
    #: Metadata members filled in when discovery leaves them out (a discovered member
    #: always wins): documented facts such as ``code_challenge_methods_supported``.
    metadata_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: ``(resource, scope) -> scope``: the response's ``scope`` in the caller's names.
    granted_scopes: Callable[[str | None, str], str] = _same_scope
    #: Access tokens are never read by the client (no ``scope``/``scp``/``aud`` from a
    #: JWT): the provider documents them as opaque to clients.
    opaque_access_tokens: bool = False
    #: When set, the authorization code flow is refused with this explanation
    #: (``ConfigurationError``), before any request: the provider documents no PKCE S256.
    authorization_code_refusal: str | None = None

    def __repr__(self) -> str:
        return f"ProviderProfile(name={self.name!r}, issuer={self.issuer!r})"

    def join_scopes(self, scopes: Sequence[str]) -> str:
        return self.scope_separator.join(scopes)

    def complete_metadata(self, metadata: ServerMetadata) -> ServerMetadata:
        """``metadata`` with :attr:`metadata_defaults` filled in where it is silent."""
        missing = {
            name: value
            for name, value in self.metadata_defaults.items()
            if name not in metadata.model_fields_set
        }
        if not missing:
            return metadata
        from agent_identity.models import ServerMetadata

        return ServerMetadata.model_validate({**metadata.model_dump(), **missing})


#: Standards only: what every compliant authorization server gets.
STANDARD = ProviderProfile(name="standard", issuer="")
