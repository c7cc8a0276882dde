"""The ``agent-identity`` command line.

::

    agent-identity dev-idp [--port 9000] [--access-token-ttl SECONDS] [--ping-endpoint URL]
                           [--jwt-client-jwk FILE]
                                                run the bundled DEV-ONLY authorization server
    agent-identity discover ISSUER [--allow-insecure-loopback]
                                                fetch and validate an issuer's metadata
    agent-identity vault generate-key           print a new random vault key (base64)
    agent-identity vault rotate-keys [--url URL]
                                                re-encrypt every vault row under the current key
                                                (and seal rows of earlier releases for their
                                                version)
    agent-identity vault migrate [--url URL]    create or upgrade the vault schema
    agent-identity audit verify FILE [FILE...]  check the hash chain of JSONL audit files
    agent-identity version

The vault commands read ``AGENT_IDENTITY_VAULT_URL`` (default: the embedded SQLite vault)
and ``AGENT_IDENTITY_VAULT_KEYS`` (``kid:base64,...``, the first is current).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import anyio

__all__ = ["main"]


_DESCRIPTION = """\
The command line of the agent-identity SDK: an OAuth 2.1 / OpenID identity for AI agents."""

_EPILOG = """\
examples:
  agent-identity dev-idp --port 0           run the dev-only authorization server on a free port
  agent-identity discover https://idp.example.com
  agent-identity vault generate-key         a new key for AGENT_IDENTITY_VAULT_KEYS
  agent-identity audit verify audit.jsonl

environment:
  AGENT_IDENTITY_VAULT_URL    the vault of the vault commands (default: the embedded SQLite vault)
  AGENT_IDENTITY_VAULT_KEYS   its keys, kid:base64,... (the first is current)

"agent-identity COMMAND --help" describes one command."""

_VAULT_EPILOG = """\
The vault commands read AGENT_IDENTITY_VAULT_URL (default: the embedded SQLite vault in the
user data directory) and AGENT_IDENTITY_VAULT_KEYS (kid:base64,..., the first is current)."""


class _Formatter(argparse.HelpFormatter):
    """Sub-command names and their help on one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.choices is not None and action.nargs == argparse.PARSER:
            # argparse measures sub-command names without their extra indentation
            self._action_max_length += self._indent_increment


class _RawFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs laid out by hand, kept as written."""


def _parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    parser = argparse.ArgumentParser(
        prog="agent-identity",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_RawFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    # The dev server's options belong to agent_identity.devidp.main, which also prints this
    # command's --help: everything after "dev-idp" is handed to it (see main()).
    sub.add_parser("dev-idp", add_help=False, help="run the bundled dev-only authorization server")
    disc = sub.add_parser(
        "discover",
        formatter_class=formatter,
        help="fetch and validate an authorization server's metadata",
        description="Fetch an issuer's metadata (RFC 8414, then OpenID Discovery), check it "
        "as the SDK does and print it as JSON.",
    )
    disc.add_argument("issuer", help="the issuer identifier, e.g. https://idp.example.com")
    disc.add_argument(
        "--allow-insecure-loopback",
        action="store_true",
        help="accept an http://127.0.0.1 issuer (development only)",
    )
    vault = sub.add_parser(
        "vault",
        help="operate the token vault",
        description="Operate the token vault.",
        epilog=_VAULT_EPILOG,
        formatter_class=_RawFormatter,
    )
    vault_sub = vault.add_subparsers(
        dest="vault_command", required=True, metavar="ACTION", title="actions"
    )
    vault_sub.add_parser(
        "generate-key",
        help="print a new random 256-bit key (base64)",
        description="Print a new random 256-bit vault key (base64).",
    )
    url_help = "vault URL (default: AGENT_IDENTITY_VAULT_URL, else the embedded SQLite vault)"
    rotate = vault_sub.add_parser(
        "rotate-keys",
        help="re-encrypt every row under the current key, sealed for its version (no downtime)",
        description="Re-encrypt every vault row that is not under the current key "
        "(the first of AGENT_IDENTITY_VAULT_KEYS) or not sealed for its store version, one "
        "compare-and-swap per row.",
    )
    rotate.add_argument("--url", help=url_help)
    migrate = vault_sub.add_parser(
        "migrate",
        help="create or upgrade the vault schema (PostgreSQL; SQLite migrates on open)",
        description="Create or upgrade the vault schema. Needs no keys.",
    )
    migrate.add_argument("--url", help=url_help)
    audit = sub.add_parser(
        "audit",
        help="work with audit trails",
        description="Work with audit trails.",
        formatter_class=formatter,
    )
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION", title="actions"
    )
    verify = audit_sub.add_parser(
        "verify",
        help="verify the hash chain of JSONL audit files",
        description="Verify the hash chain of JSONL audit files (rotated files in order): "
        "prints OK or the first broken link, exits non-zero if broken.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE", help="JSONL audit file")
    sub.add_parser("version", help="print the SDK version", description="Print the SDK version.")
    return parser


async def _rotate_keys(url: str | None) -> int:
    import os

    from agent_identity.vault import Keyring, TokenVault

    keys = Keyring.from_env() if os.environ.get("AGENT_IDENTITY_VAULT_KEYS") else None
    target = url or os.environ.get("AGENT_IDENTITY_VAULT_URL") or "sqlite://"
    async with TokenVault.from_url(target, keys=keys) as vault:
        count = await vault.rotate_keys()
    print(f"re-encrypted {count} row(s) under the current key, sealed for their version")
    return 0


async def _migrate(url: str | None) -> int:
    """Bring the vault schema to this version's (no keys needed: rows are not read)."""
    import os

    target = url or os.environ.get("AGENT_IDENTITY_VAULT_URL") or "sqlite://"
    scheme = target.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from agent_identity.vault.postgres import PostgresStore

        store = PostgresStore.from_url(target, auto_migrate=False)
        try:
            before, after = await store.migrate()
        finally:
            await store.aclose()
        if before == after:
            print(f"vault schema {store.schema!r} already at version {after}")
        else:
            print(f"vault schema {store.schema!r} migrated from version {before} to {after}")
        return 0
    from agent_identity.vault import Keyring, TokenVault
    from agent_identity.vault.sqlite import SCHEMA_VERSION

    # An ephemeral key: opening the store must not create a key file.
    async with TokenVault.from_url(target, keys=Keyring.ephemeral()) as vault:
        await vault.store.version("migrate")  # SQLite migrates when it opens the file
    if scheme == "sqlite":
        print(f"SQLite vault schema at version {SCHEMA_VERSION} (SQLite migrates on open)")
    else:
        print("nothing to migrate")
    return 0


async def _discover(issuer: str, allow_insecure_loopback: bool) -> int:
    from agent_identity.client import IdentityClient

    async with IdentityClient(
        issuer, client_id="agent-identity-cli", allow_insecure_loopback=allow_insecure_loopback
    ) as client:
        print(json.dumps(client.metadata.model_dump(exclude_defaults=True), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "dev-idp":
        from agent_identity import devidp

        return devidp.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "version":
        from agent_identity import __version__

        print(__version__)
        return 0
    if args.command == "audit":
        from agent_identity.audit.chain import cli_verify

        return cli_verify(args.files)
    if args.command == "vault":
        from agent_identity.errors import AgentIdentityError

        if args.vault_command == "generate-key":
            from agent_identity.vault import generate_key

            print(generate_key())
            return 0
        command = _migrate if args.vault_command == "migrate" else _rotate_keys
        try:
            return anyio.run(command, args.url)
        except AgentIdentityError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if args.command == "discover":
        from agent_identity.errors import AgentIdentityError

        try:
            return anyio.run(_discover, args.issuer, args.allow_insecure_loopback)
        except AgentIdentityError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
