"""Guards the public API: what `agent_identity` exports, and what importing it loads."""

from __future__ import annotations

import subprocess
import sys

import agent_identity

EXPECTED = {
    # the client
    "IdentityClient",
    "UserIdentity",
    "IdentitySettings",
    "BlockingIdentityClient",
    # one authorization server, and provider profiles
    "AuthorizationServer",
    "ProviderProfile",
    # consent
    "ConsentFlow",
    "ConsentHandler",
    "ConsoleConsent",
    "DeviceCodeConsent",
    "LoopbackConsent",
    "NotebookConsent",
    "WebConsent",
    "WebConsentResult",
    # the vault and delegation
    "TokenVault",
    "Keyring",
    "KeyProvider",
    "DelegationChain",
    "Actor",
    # MCP servers
    "McpAuth",
    # sender-constrained tokens (DPoP) and rich authorization requests
    "DPoPKey",
    "DPoPKeyProvider",
    "SoftwareDPoPKeys",
    "TokenAuth",
    "AuthorizationDetail",
    # human approval (CIBA)
    "Action",
    "Approval",
    "ApprovalPolicy",
    # values
    "AccessToken",
    "DeviceAuthorization",
    "Grant",
    "ServerMetadata",
    "TokenResponse",
    "Clock",
    "SystemClock",
    # errors
    "AccessDenied",
    "AgentIdentityError",
    "ApprovalDenied",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalPending",
    "ApprovalUnavailable",
    "AuthorizationResponseError",
    "ConfigurationError",
    "ConsentDenied",
    "ConsentError",
    "ConsentRequired",
    "ConsentTimeout",
    "ExpiredToken",
    "InsecureURLError",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidScope",
    "InvalidTarget",
    "InvalidTokenError",
    "IssuerMismatch",
    "MetadataError",
    "OAuthError",
    "ProtocolViolation",
    "ReauthorizationRequired",
    "TokenBindingError",
    "TokenPolicyError",
    "RequestTimeout",
    "SSRFBlockedError",
    "ServerError",
    "StateMismatch",
    "StepUpLimitExceeded",
    "TemporarilyUnavailable",
    "TransportError",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "VaultCorrupted",
    "VaultError",
    "VaultKeyError",
    "VaultRollback",
    "VaultUnavailable",
    "VersionConflict",
    "__version__",
}


def test_all_is_sorted_and_exactly_the_public_api() -> None:
    assert agent_identity.__all__ == sorted(agent_identity.__all__)
    assert set(agent_identity.__all__) == EXPECTED


def test_every_export_resolves_and_is_documented() -> None:
    for name in agent_identity.__all__:
        value = getattr(agent_identity, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"
            assert value.__module__.startswith("agent_identity"), name


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        agent_identity.DoesNotExist  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_every_error_derives_from_the_root() -> None:
    from agent_identity import errors

    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, errors.AgentIdentityError), name


def test_import_does_not_load_optional_integrations() -> None:
    code = (
        "import sys, agent_identity\n"
        "from agent_identity import IdentityClient, LoopbackConsent\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('langchain', 'langchain_core', 'langgraph', 'opentelemetry', 'asyncpg', 'psycopg', "
        "'psycopg2', 'IPython')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_client_defers_the_heavy_modules() -> None:
    """Issue 10 item 8: the HTTP stack, the web and browser consent handlers, the SQLite
    store and pydantic's validator build wait for first use (benchmarks/run.py measures)."""
    code = (
        "import sys\n"
        "from agent_identity import IdentityClient\n"
        "heavy = ('httpx2', 'httpcore2', 'trio', 'email.utils', 'agent_identity._guard', "
        "'agent_identity.consent.web', 'agent_identity.consent.loopback', "
        "'agent_identity.vault.sqlite', 'agent_identity.audit', 'importlib.metadata')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_only_the_http_layer_imports_httpx2() -> None:
    import pathlib

    root = pathlib.Path(agent_identity.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        # the I/O layer (the driver, its SSRF-guarded transport, the resource-side
        # httpx2.Auth flows), and mcp.py: an httpx2.Auth (an HTTP-layer component, design.md)
        io_layer = ("_http.py", "_guard.py", "_resource_auth.py", "mcp.py")
        if path.name in io_layer or "node_modules" in path.parts:
            continue
        text = path.read_text()
        if "import httpx2" in text.replace("    import httpx2", "") or "from httpx2" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_protocol_core_does_no_io() -> None:
    import pathlib

    root = pathlib.Path(agent_identity.__file__).parent / "oauth"
    for path in root.glob("*.py"):
        text = path.read_text()
        for forbidden in (
            "import httpx2",
            "import anyio",
            "import socket",
            "agent_identity._http import",
            "from agent_identity import _http",
        ):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


def test_test_modules_have_unique_names() -> None:
    """The test folders are not packages, so two test files with one name stop collection."""
    import collections
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    names = collections.Counter(
        p.name for folder in ("tests", "integrations") for p in (root / folder).rglob("test_*.py")
    )
    assert [name for name, count in names.items() if count > 1] == []
