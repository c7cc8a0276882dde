"""The metadata documents, extended the way an operator of this deployment would.

DOT 3.x serves RFC 8414 (``OAuthServerMetadataView``) and OpenID Connect Discovery
(``ConnectDiscoveryInfoView``) documents. Both omit members that describe endpoints and
methods this deployment really has; the subclasses below add exactly those, from the same
URL names DOT itself reverses, and nothing else:

- ``device_authorization_endpoint`` (RFC 8628 §4): DOT serves the endpoint but never
  publishes it;
- ``token_endpoint_auth_signing_alg_values_supported`` (RFC 8414 §2: required when
  ``private_key_jwt`` is listed, which this deployment adds in its validator);
- in the OpenID document, ``grant_types_supported`` (OpenID Discovery §3: its default,
  ``authorization_code implicit``, would be false here), ``revocation_endpoint`` and
  ``introspection_endpoint`` (present in DOT's RFC 8414 document only).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider.views import ConnectDiscoveryInfoView, OAuthServerMetadataView

from .validators import _ALGORITHMS


def _extended(response: HttpResponse, extra: dict[str, Any]) -> HttpResponse:
    if response.status_code != 200:
        return response
    data = json.loads(response.content)
    data.update({k: v for k, v in extra.items() if k not in data or k == "grant_types_supported"})
    out = JsonResponse(data)
    out["Access-Control-Allow-Origin"] = "*"
    return out


class ServerMetadata(OAuthServerMetadataView):
    """RFC 8414 metadata, plus the device endpoint and the assertion algorithms."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().get(request, *args, **kwargs)
        return _extended(
            response,
            {
                "device_authorization_endpoint": self._get_endpoint_url(
                    request, "device-authorization", required=True
                ),
                "token_endpoint_auth_signing_alg_values_supported": _ALGORITHMS,
            },
        )


class OpenIDConfiguration(ConnectDiscoveryInfoView):
    """OpenID Connect Discovery, plus what the RFC 8414 document already says."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().get(request, *args, **kwargs)
        return _extended(
            response,
            {
                "grant_types_supported": settings.OAUTH2_PROVIDER["OAUTH2_GRANT_TYPES_SUPPORTED"],
                "revocation_endpoint": self._get_endpoint_url(request, "revoke-token"),
                "introspection_endpoint": self._get_endpoint_url(request, "introspect"),
                "device_authorization_endpoint": self._get_endpoint_url(
                    request, "device-authorization", required=True
                ),
                "token_endpoint_auth_signing_alg_values_supported": _ALGORITHMS,
            },
        )
