"""Test helpers for the PostgreSQL vault store: find the server, give each test a schema.

- The server: ``AGENT_IDENTITY_TEST_POSTGRES_DSN`` if set, else
  ``postgresql://postgres@127.0.0.1:5432/test`` (what CI machines run, with trust auth).
  Without psycopg or without a reachable server the PostgreSQL tests SKIP on a developer
  machine and FAIL when ``CI`` is set (the policy of ``tests/_idp.py``).
- Isolation: every test gets its own PostgreSQL schema, ``ai_test_<epoch>_<pid>_<n>``,
  dropped after the test (and, should that fail, at interpreter exit). Schemas of this kind
  older than an hour, left behind by a killed run, are dropped when a run starts. Runs and
  concurrent sessions never share a schema.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

DSN_ENV = "AGENT_IDENTITY_TEST_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_PREFIX = "ai_test_"
_STALE_AFTER = 3600
_STALE = re.compile(rf"{_PREFIX}(\d+)_\d+_\d+")

_state: dict[str, Any] = {}
_counter = itertools.count(1)
_created: set[str] = set()


def dsn() -> str:
    return os.environ.get(DSN_ENV) or DEFAULT_DSN


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error)")
    pytest.skip(reason)


def postgres_dsn() -> str:
    """The test server's DSN, once it answered; skips or fails (see the module docstring)."""
    if "error" in _state:
        _unavailable(_state["error"])
    if "dsn" in _state:
        return str(_state["dsn"])
    try:
        import psycopg
    except ImportError:
        _state["error"] = "needs psycopg (pip install 'agent-identity-sdk[postgres]')"
        _unavailable(_state["error"])
    target = dsn()
    try:
        with psycopg.connect(target, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _state["error"] = (
            f"needs PostgreSQL at {_describe(target)} ({type(exc).__name__}); set {DSN_ENV} "
            "to another server"
        )
        _unavailable(_state["error"])
    _state["dsn"] = target
    _drop_stale()
    atexit.register(_drop_created)
    return target


def _describe(target: str) -> str:
    parts = urlsplit(target)
    host = parts.hostname or "?"
    return f"{host}:{parts.port or 5432}{parts.path}" if parts.scheme else "the configured DSN"


def admin() -> Any:
    """An autocommit psycopg connection to the test server (close it, or use ``with``)."""
    import psycopg

    return psycopg.connect(postgres_dsn(), autocommit=True, connect_timeout=3)


def new_schema() -> str:
    """A fresh, unused schema name (the store creates the schema itself)."""
    postgres_dsn()
    name = f"{_PREFIX}{int(time.time())}_{os.getpid()}_{next(_counter)}"
    _created.add(name)
    return name


def drop_schema(name: str) -> None:
    import psycopg
    from psycopg import sql

    with admin() as conn:
        # end our sessions on it first: a leaked pool would otherwise hold locks
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks l JOIN pg_class c"
            " ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
            (name,),
        )
        with contextlib.suppress(psycopg.Error):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    _created.discard(name)


def _drop_created() -> None:
    for name in list(_created):
        with contextlib.suppress(Exception):
            drop_schema(name)


def _drop_stale() -> None:
    import psycopg

    cutoff = time.time() - _STALE_AFTER
    try:
        with admin() as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (_PREFIX,)
            ).fetchall()
    except psycopg.Error:
        return
    for (name,) in rows:
        match = _STALE.fullmatch(name)
        if match and int(match.group(1)) < cutoff:
            with contextlib.suppress(Exception):
                drop_schema(name)


def url(schema: str, **params: str) -> str:
    """A vault URL for the test server with ``?schema=`` (and more libpq ``params``)."""
    parts = urlsplit(postgres_dsn())
    query = urlencode({"schema": schema, **params})
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name of the test's own on the test server, dropped after the test."""
    name = new_schema()
    try:
        yield name
    finally:
        drop_schema(name)
