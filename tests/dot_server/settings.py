"""Django settings of the DEV ONLY django-oauth-toolkit test server.

The launcher (:mod:`dot_server.serve`) sets two environment variables before Django reads
this module: ``DOT_SERVER_CONFIG`` (a JSON file written by ``tests/_dot.py``: database
path, clients, users, lifetimes) and ``DOT_SERVER_ISSUER`` (``http://127.0.0.1:PORT/o``,
known once the socket is bound).

Every value that differs from Django's or DOT's defaults says why.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CONFIG = json.loads(Path(os.environ["DOT_SERVER_CONFIG"]).read_text())
ISSUER = os.environ["DOT_SERVER_ISSUER"]  # http://127.0.0.1:PORT/o, no trailing slash
BASE_DIR = Path(__file__).resolve().parent

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# One RS256 signing key per run (ID tokens). Never persisted.
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE_KEY_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode("ascii")

SECRET_KEY = secrets.token_urlsafe(50)  # per run: sessions and CSRF tokens die with it
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "[::1]", "localhost"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "dot_server.urls"
STATIC_URL = "/static/"  # DOT's templates use {% static %}; nothing is served

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]

MIDDLEWARE = [
    # Outermost: the /dev/ request log and quirk toggles see what the client sent and
    # what it finally receives (a test server's hooks; no deployment has them).
    "dot_server.hooks.DevHooksMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,  # DOT's own authorize / device templates
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": CONFIG["database"],
        # The server is threaded (the loopback consent redirect and the token request
        # overlap): wait for SQLite's write lock instead of failing at once.
        "OPTIONS": {"timeout": 30},
    }
}

# Test speed: Django's documented hasher for test suites. PBKDF2 (the default) costs
# about half a second per hash on the CI machines, and DOT hashes client secrets with the
# same hashers, so every token request would pay it. Never use this in production.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "/accounts/login/"

# Quiet: the launcher keeps stderr for diagnostics (shown when a test fails to start the
# server); request lines are logged without query strings by the launcher.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {"django.request": {"level": "ERROR"}, "oauth2_provider": {"level": "ERROR"}},
}

_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": RSA_PRIVATE_KEY_PEM,
    # The issuer is fixed rather than derived from each request: the metadata documents,
    # ID tokens and the RFC 9207 ``iss`` parameter then all carry exactly this value
    # (DOT's docs ask for it when the RFC 8414 document is also served at the root).
    "OIDC_ISS_ENDPOINT": ISSUER,
    "SCOPES": {
        "openid": "OpenID Connect sign-in",
        "profile": "Your name",
        "email": "Your email address",
        "offline_access": "Access while you are away (refresh tokens)",
        "calendar.read": "Read your calendar",
        "calendar.write": "Change your calendar",
        "mail.read": "Read your mail",
        "mail.send": "Send mail as you",
        "payments.read": "See your payments",
        "payments.write": "Make payments",
    },
    # Validator with private_key_jwt (RFC 7523) and the users' OIDC claims.
    "OAUTH2_VALIDATOR_CLASS": "dot_server.validators.TestServerValidator",
    # Advertise what this deployment accepts: DOT's defaults list only the two secret
    # methods, yet it accepts public clients, and the validator adds private_key_jwt.
    "OIDC_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": _AUTH_METHODS,
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": _AUTH_METHODS,
    # Code flow only (OAuth 2.1): no implicit, hybrid or password grant.
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OIDC_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_GRANT_TYPES_SUPPORTED": [
        "authorization_code",
        "refresh_token",
        "client_credentials",
        DEVICE_CODE_GRANT,
    ],
    "PKCE_REQUIRED": True,  # DOT's default, stated: PKCE for every client
    # Lifetimes from the launcher (the dev server's defaults unless a test asks).
    "ACCESS_TOKEN_EXPIRE_SECONDS": CONFIG["access_token_ttl"],
    "REFRESH_TOKEN_EXPIRE_SECONDS": CONFIG["refresh_token_ttl"],
    "ID_TOKEN_EXPIRE_SECONDS": 3600,
    "ROTATE_REFRESH_TOKEN": True,  # DOT's default, stated: the SDK must keep up
    # RFC 9700 §4.14.2: replaying a rotated refresh token revokes the whole token family.
    # Off by default in DOT 3.x; an operator following the BCP turns it on.
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    # RFC 8628: DOT serves /device/ but needs to be told its public URL; the complete URI
    # pre-fills the code (DOT's user code form reads ?user_code=).
    "OAUTH_DEVICE_VERIFICATION_URI": f"{ISSUER}/device/",
    "OAUTH_DEVICE_VERIFICATION_URI_COMPLETE": f"{ISSUER}/device/?user_code={{user_code}}",
    # Test speed: poll every second instead of DOT's 5 s (RFC 8628 §3.2 lets the server
    # choose).
    "DEVICE_FLOW_INTERVAL": 1,
    # RFC 9700 gates of DOT 3.x, all adopted early as an operator following the BCP would:
    # no implicit or password grant, S256 only (``plain`` is neither accepted nor
    # advertised), access tokens never in query strings, RFC 9207 ``iss`` in authorization
    # responses (and advertised), tokens hashed at rest.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
}
