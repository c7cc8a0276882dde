"""Entry point of the DEV ONLY django-oauth-toolkit test server.

Usage (``tests/_dot.py`` does this)::

    python tests/dot_server/serve.py --config CONFIG.json

It binds ``127.0.0.1`` on an ephemeral port first (so that the issuer is known before
Django reads its settings), creates the SQLite schema (copied from a migrated template
database when ``template_database`` is given, else by running the migrations), seeds the
users and clients of the configuration, prints ONE JSON line on stdout::

    {"ready": true, "issuer": "http://127.0.0.1:PORT/o", "port": PORT}

and serves until SIGTERM, or until its stdin closes (the launcher went away).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

_TESTS_DIR = Path(__file__).resolve().parent.parent


def _exit_with_parent(config_path: Path) -> None:
    """Exit when stdin reaches EOF: the launcher died or closed it (never outlive pytest).
    The launcher's temporary directory (config, database, log) goes too: a launcher that
    was killed cannot remove it."""
    workdir = config_path.resolve().parent

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            if workdir.name.startswith("dot-server-"):
                shutil.rmtree(workdir, ignore_errors=True)
            os._exit(0)

    threading.Thread(target=watch, name="dot-parent-watch", daemon=True).start()


def _prepare_database(config: dict[str, Any]) -> None:
    from django.core.management import call_command

    template = config.get("template_database")
    if template and Path(template).is_file():
        shutil.copyfile(template, config["database"])
        return
    call_command("migrate", verbosity=0, interactive=False)


def _seed(config: dict[str, Any]) -> None:
    from django.contrib.auth import get_user_model
    from oauth2_provider.models import get_application_model

    user_model = get_user_model()
    for login, info in config["users"].items():
        user_model.objects.create_user(
            username=login,
            password=info["password"],
            email=info["email"],
            first_name=info["first_name"],
            last_name=info["last_name"],
        )
    application_model = get_application_model()
    for client in config["clients"]:
        application_model.objects.create(
            client_id=client["client_id"],
            name=f"{client['client_id']} (dev only)",
            client_type=client["client_type"],
            authorization_grant_type=client["grant_type"],
            # A private_key_jwt client has no usable secret: DOT requires one for a
            # confidential application, so it gets a random one nobody knows.
            client_secret=client.get("client_secret") or os.urandom(24).hex(),
            redirect_uris=" ".join(client.get("redirect_uris", [])),
            post_logout_redirect_uris="",
            # RS256 ID tokens (signed with the server's key, published in its JWKS).
            algorithm="RS256" if client.get("redirect_uris") else "",
        )


def _serve(config_path: Path) -> None:
    from wsgiref.simple_server import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        """Logs only server errors, and never a query string (codes, user codes)."""

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if str(code).startswith("5"):
                path = self.path.split("?", 1)[0]
                sys.stderr.write(f"dot-server: {self.command} {path} -> {code}\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    from django.core.servers.basehttp import ThreadedWSGIServer

    httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    port = httpd.server_address[1]
    issuer = f"http://127.0.0.1:{port}/o"
    os.environ["DOT_SERVER_CONFIG"] = str(config_path)
    os.environ["DOT_SERVER_ISSUER"] = issuer
    os.environ["DJANGO_SETTINGS_MODULE"] = "dot_server.settings"

    import django

    django.setup()
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    config = settings.CONFIG
    _prepare_database(config)
    _seed(config)
    httpd.set_app(get_wsgi_application())

    def stop(_signum: int, _frame: Any) -> None:
        # Nothing to flush: the database is a throwaway file the launcher deletes.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(json.dumps({"ready": True, "issuer": issuer, "port": port}) + "\n")
    sys.stdout.flush()
    httpd.serve_forever(poll_interval=0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DEV ONLY django-oauth-toolkit test server")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--migrate-only",
        action="store_true",
        help="create the migrated database named in the configuration, then exit",
    )
    args = parser.parse_args(argv)
    # Run as a script: import the package from tests/, not its modules from their folder.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = str(_TESTS_DIR)
    else:
        sys.path.insert(0, str(_TESTS_DIR))
    if args.migrate_only:
        os.environ["DOT_SERVER_CONFIG"] = str(args.config)
        os.environ["DOT_SERVER_ISSUER"] = "http://127.0.0.1:9/o"  # unused by migrations
        os.environ["DJANGO_SETTINGS_MODULE"] = "dot_server.settings"
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        return 0
    if os.environ.get("DOT_SERVER_EXIT_WITH_PARENT") == "1":
        _exit_with_parent(args.config)
    _serve(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
