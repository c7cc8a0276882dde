"""URLs: DOT under ``/o`` (the issuer's path), RFC 8414 metadata at the root, login, hooks.

The issuer is ``http://127.0.0.1:PORT/o``. RFC 8414 §3.1 puts its metadata at
``/.well-known/oauth-authorization-server/o`` (the well-known segment inserted before the
issuer's path), which DOT's documentation asks prefixed deployments to mount at the
server root; OpenID Discovery puts its document at ``/o/.well-known/openid-configuration``.
DOT's application-management pages are not mounted (clients are seeded at start).
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from oauth2_provider import urls as dot_urls
from oauth2_provider import views as dot_views

from . import hooks
from .discovery import OpenIDConfiguration, ServerMetadata

_dot = (
    [
        *dot_urls.base_urlpatterns,  # authorize, token, revoke_token, introspect, device
        path(
            ".well-known/oauth-authorization-server",
            ServerMetadata.as_view(),
            name="oauth-server-metadata",
        ),
        re_path(
            r"^\.well-known/openid-configuration/?$",
            OpenIDConfiguration.as_view(),
            name="oidc-connect-discovery-info",
        ),
        path(".well-known/jwks.json", dot_views.JwksInfoView.as_view(), name="jwks-info"),
        path("userinfo/", dot_views.UserInfoView.as_view(), name="user-info"),
    ],
    "oauth2_provider",
)

urlpatterns = [
    path(
        ".well-known/oauth-authorization-server/<path:issuer_path>",
        ServerMetadata.as_view(),
        name="oauth-server-metadata-issuer",
    ),
    path("o/", include(_dot)),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="registration/login.html"),
        name="login",
    ),
    path("dev/health", hooks.health),
    path("dev/requests", hooks.requests),
    path("dev/quirks", hooks.quirks),
    path("dev/assertion-audience", hooks.audience),
    path("dev/users/<str:login>/revoke-grants", hooks.revoke_grants),
]
