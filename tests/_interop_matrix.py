"""The interop matrix: which flow works against which authorization server or provider,
recorded from the test run itself and rendered into ``docs/interop.md``.

A test takes part when it is a flow of ``test_interop.py`` run against a ``server``
(``tests/_servers.py``: one column per real authorization server) or carries
``@pytest.mark.interop(target=..., flow=...)`` (a provider profile, the MCP conformance
suite). Each cell is the test's outcome: passed,
skipped with its reason (a flow the target does not offer), or failed.

- ``AGENT_IDENTITY_WRITE_INTEROP=1 python -m pytest tests/integration`` writes
  ``docs/interop.md`` at the end of the run;
- otherwise ``test_zz_interop_doc.py`` (it runs after the flows) compares the matrix of
  this run with the file, so the document stays true: regenerate it when it fails.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
ENV = "AGENT_IDENTITY_WRITE_INTEROP"

#: The columns, in order (targets seen in a run but not listed here come after).
TARGET_ORDER = [
    "devidp",
    "dot",
    "github",
    "google",
    "entra",
    "entra-multitenant",
    "slack",
    "atlassian",
    "notion",
    "mcp-conformance",
]
TARGET_TITLES = {
    "devidp": "oidc-provider (dev server)",
    "dot": "django-oauth-toolkit",
    "mcp-conformance": "MCP conformance suite",
}

HEADER = """# Interoperability

Generated from a test run (`AGENT_IDENTITY_WRITE_INTEROP=1 python -m pytest
tests/integration`); `tests/integration/test_zz_interop_doc.py` fails when this file no
longer matches what the tests observe. Each cell is the outcome of the same test, written
once, against that target:

- **pass**: the flow ran end to end through the public API and the server agreed (its
  request log, introspection or the token's claims);
- **n/a**: the target does not offer the flow; the note says why;
- **FAIL**: the flow failed (this file is then not what a green run produces);
- blank: no test exercises that flow against that target.

The two authorization servers are real, independent implementations started by the test
suite: oidc-provider (OpenID Certified, the bundled dev server) and django-oauth-toolkit
(`tests/dot_server/`). Provider profiles are tested against local servers that reproduce
each provider's documented responses, not against the live services. The MCP column is the
official MCP conformance suite (`@modelcontextprotocol/conformance`) run against the
conformance client in `tests/mcp_conformance/`.
"""


TABLES = {
    "servers": "Authorization servers",
    "providers": "Provider profiles (against local servers reproducing their documented responses)",
    "mcp": "MCP: the official conformance suite's client scenarios",
}


@dataclass
class Matrix:
    #: (table, flow, target) -> (outcome, note)
    cells: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    #: Remarks on what a target supports (ServerUnderTest.notes), by target.
    target_notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def record(
        self, flow: str, target: str, outcome: str, note: str = "", table: str = "servers"
    ) -> None:
        previous = self.cells.get((table, flow, target))
        if previous is not None and previous[0] == "FAIL":
            return  # a failing phase (setup, call, teardown) wins
        if previous is not None and previous[0] == "pass" and outcome == "pass":
            return
        self.cells[(table, flow, target)] = (outcome, note)

    def targets(self) -> set[str]:
        return {target for _table, _flow, target in self.cells}

    def render(self) -> str:
        notes: dict[str, int] = {}
        lines = [HEADER]
        for table in [t for t in TABLES if any(c[0] == t for c in self.cells)]:
            cells = {(f, t): v for (tb, f, t), v in self.cells.items() if tb == table}
            targets = sorted(
                {t for _, t in cells},
                key=lambda t: (TARGET_ORDER.index(t) if t in TARGET_ORDER else 99, t),
            )
            flows = sorted({f for f, _ in cells})
            lines.append(f"## {TABLES[table]}")
            lines.append("")
            lines.append("| flow | " + " | ".join(TARGET_TITLES.get(t, t) for t in targets) + " |")
            lines.append("|---|" + "---|" * len(targets))
            for flow in flows:
                row = []
                for target in targets:
                    cell = cells.get((flow, target))
                    if cell is None:
                        row.append("")
                        continue
                    outcome, note = cell
                    if note:
                        number = notes.setdefault(note, len(notes) + 1)
                        row.append(f"{outcome} [{number}]")
                    else:
                        row.append(outcome)
                lines.append(f"| {flow} | " + " | ".join(row) + " |")
            lines.append("")
        if notes:
            lines.append("")
            lines.append("Notes:")
            lines.append("")
            for note, number in notes.items():
                lines.append(f"{number}. {note}")
        for target in sorted(self.target_notes):
            remarks = self.target_notes.get(target)
            if not remarks:
                continue
            lines.append("")
            lines.append(f"What to know about {TARGET_TITLES.get(target, target)}:")
            lines.append("")
            for capability, remark in sorted(remarks.items()):
                lines.append(f"- {capability}: {remark}")
        return "\n".join(lines) + "\n"


MATRIX = Matrix()


def _flow_name(item: pytest.Item, drop: str | None) -> str:
    name = item.name.removeprefix("test_")
    base, _, params = name.partition("[")
    parts = [p for p in params.rstrip("]").split("-") if p and p != drop] if params else []
    text = base.replace("_", " ")
    return f"{text} ({', '.join(parts)})" if parts else text


@dataclass(frozen=True)
class _Cell:
    target: str
    flow: str
    table: str = "servers"
    #: When the test passes, the cell reads n/a with this reason (a refusal proven).
    na: str = ""


def _target(item: pytest.Item) -> _Cell | None:
    marker = item.get_closest_marker("interop")
    if marker is not None:
        return _Cell(
            target=str(marker.kwargs["target"]),
            flow=str(marker.kwargs.get("flow") or _flow_name(item, None)),
            table=str(marker.kwargs.get("table", "servers")),
            na=str(marker.kwargs.get("na", "")),
        )
    callspec = getattr(item, "callspec", None)
    module = getattr(getattr(item, "module", None), "__name__", "")
    if callspec is not None and "server" in callspec.params and module.endswith("test_interop"):
        target = str(callspec.params["server"])
        server = getattr(item, "funcargs", {}).get("server")
        if server is not None and getattr(server, "notes", None):
            MATRIX.target_notes[target] = dict(server.notes)
        return _Cell(target=target, flow=_flow_name(item, target))
    return None


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^Skipped: ", "", text)
    text = re.sub(r"^[a-z-]+: ", "", text)  # "dot: <reason>" from ServerUnderTest.require
    return text.replace("|", "/")[:300]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop(target, flow): a cell of the interop matrix (docs/interop.md)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    cell = _target(item)
    if cell is None:
        return
    record = functools.partial(MATRIX.record, cell.flow, cell.target, table=cell.table)
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if hasattr(report, "wasxfail"):
            record("FAIL", _clean(str(report.wasxfail)))
        else:
            record("n/a", _clean(str(reason)))
    elif report.failed:
        record("FAIL")
    elif report.when == "call":
        if cell.na:
            record("n/a", cell.na)
        else:
            record("pass")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(ENV) and MATRIX.cells:
        DOC.write_text(MATRIX.render())
