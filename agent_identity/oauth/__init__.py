"""Sans-IO OAuth 2.1 / OpenID protocol core: builders and parsers, no I/O."""
