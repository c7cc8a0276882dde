"""DEV ONLY: a second, independent authorization server for the integration tests.

A minimal Django project running django-oauth-toolkit (DOT) 3.x as an OAuth 2.1 / OpenID
Connect server, so that the SDK is tested against an implementation other than the
bundled ``oidc-provider`` dev server. It is started by ``tests/_dot.py`` (``DotServer``)
as a subprocess of the test run, on ``127.0.0.1`` and an ephemeral port, with its own
SQLite database in a temporary directory, well-known DEV ONLY secrets and test hooks
under ``/dev/`` that no real deployment has. Never expose it to a network.

Modules:

- :mod:`dot_server.settings`: the DOT configuration; every deviation from DOT's defaults
  carries a comment saying why;
- :mod:`dot_server.urls`: DOT mounted under ``/o`` (the issuer's path), the RFC 8414
  metadata at the root as DOT's documentation asks for prefixed deployments, the login
  page and the ``/dev/`` hooks;
- :mod:`dot_server.discovery`: the metadata views, extended with the members an operator
  would publish that DOT's stock views omit;
- :mod:`dot_server.validators`: ``private_key_jwt`` client authentication (RFC 7523),
  which DOT does not have, and the ID token / userinfo claims;
- :mod:`dot_server.hooks`: the request log, the quirk toggles and the other ``/dev/``
  hooks;
- :mod:`dot_server.serve`: the entry point (bind, migrate, seed, serve).
"""
