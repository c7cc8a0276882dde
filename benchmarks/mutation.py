"""Mutation testing of the security-critical modules, as a report (not a CI gate).

    .venv/bin/pip install -e '.[mutation]'      # mutmut 3
    .venv/bin/python benchmarks/mutation.py [--module oauth] [--max-children 2]
                                            [--survivors] [--workdir DIR]

For each module group below, a fresh copy of the package and the tests is made in
``--workdir`` (default: a temporary directory), a ``[tool.mutmut]`` section restricts
the mutations to that group and the test run to the group's own fast unit tests, and
``mutmut run`` does the rest (mutmut runs, for each mutant, only the selected tests that
execute the mutated function). Printed per module: mutants, killed (timeouts count as
killed), survived, not covered by the selected tests, and the score
``killed / (killed + survived)``. ``--survivors`` prints each surviving mutant's diff,
marked ``text`` when only the text of a message, log line or docstring changed (a
string literal), else ``logic``.

Out of this round: ``agent_identity/vault/`` and ``agent_identity/approval/flow.py``
(changed by other work at the same time), and ``client.py``, ``user.py``, ``mcp.py``
(being refactored). On two cores the whole run takes tens of minutes; run one group at a
time with ``--module`` (and in the background). Results and the explained survivors are
in docs/security.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the unit tests that must kill their mutants."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS: dict[str, Group] = {
    "oauth": Group(
        # the bounded-number and text rules moved to the bottom layer (agent_identity/_limits.py)
        ("agent_identity/oauth/*.py", "agent_identity/_limits.py"),
        (
            "tests/unit/test_input_limits.py",
            "tests/unit/test_oauth_edges.py",
            "tests/unit/test_resource_auth.py",
            "tests/unit/test_json.py",
            "tests/unit/test_token.py",
            "tests/unit/test_models.py",
            "tests/unit/test_authorize.py",
            "tests/unit/test_code_redemption.py",
            "tests/unit/test_ciba.py",
            "tests/unit/test_device.py",
            "tests/unit/test_registration.py",
            "tests/unit/test_jwt.py",
            "tests/unit/test_www_authenticate.py",
            "tests/unit/test_urls.py",
            "tests/unit/test_discovery.py",
            "tests/unit/test_resource_metadata.py",
            "tests/unit/test_exchange.py",
            "tests/unit/test_revocation.py",
            "tests/unit/test_client_auth.py",
            "tests/unit/test_pkce.py",
        ),
    ),
    "http": Group(
        (
            "agent_identity/_http.py",
            "agent_identity/_guard.py",
            "agent_identity/_netguard.py",
            "agent_identity/_resource_auth.py",
        ),
        (
            "tests/unit/test_http.py",
            "tests/unit/test_http_edges.py",
            "tests/unit/test_resource_auth.py",
            "tests/unit/test_client_faults.py",
        ),
    ),
    "tools": Group(("agent_identity/tools.py",), ("tests/unit/test_tools.py",)),
    "audit-chain": Group(("agent_identity/audit/chain.py",), ("tests/unit/test_audit_chain.py",)),
    "approval-ping": Group(
        ("agent_identity/approval/ping.py",),
        ("tests/unit/test_approval_ping.py",),
    ),
    "approval-action": Group(
        ("agent_identity/approval/action.py",),
        ("tests/unit/test_approval_action.py", "tests/unit/test_tools.py"),
    ),
}

DETECTED = {"killed", "timeout", "caught by type check", "segfault", "suspicious"}


def _config(group: Group) -> str:
    def toml_list(items: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["agent_identity"]\n'
        f"only_mutate = {toml_list(group.modules)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(group.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-p", "no:randomly"]\n'
    )


def _prepare(workdir: Path, group: Group) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    shutil.copytree(ROOT / "agent_identity", workdir / "agent_identity", ignore=ignore)
    shutil.copytree(ROOT / "tests", workdir / "tests", ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text() + _config(group)
    (workdir / "pyproject.toml").write_text(pyproject)


def _results(workdir: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"],
        cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    results: dict[str, str] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            results[name] = status
    return results


_STRING = re.compile(r"""(?:[rbuf]{0,2})("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _diff(workdir: Path, name: str) -> tuple[str, str]:
    """``(kind, diff)``: ``text`` when the mutant only changed string literals."""
    shown = subprocess.run(
        [str(MUTMUT), "show", name], cwd=workdir, capture_output=True, text=True
    ).stdout  # fmt: skip
    removed = [
        ln[1:] for ln in shown.splitlines() if ln.startswith("-") and not ln.startswith("---")
    ]
    added = [ln[1:] for ln in shown.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    diff = "\n".join([*(f"      - {ln.strip()}" for ln in removed),
                      *(f"      + {ln.strip()}" for ln in added)])  # fmt: skip
    strip = [_STRING.sub('""', ln) for ln in removed], [_STRING.sub('""', ln) for ln in added]
    text_only = bool(removed) and strip[0] == strip[1]
    none_message = [ln.replace("(None)", '("")') for ln in strip[1]] == strip[0]
    return ("text" if text_only or none_message else "logic"), diff


def _module_of(name: str) -> str:
    dotted = name.split(".x_")[0].split(".xǁ")[0]
    return dotted.replace(".", "/") + ".py"


def run_group(name: str, group: Group, base: Path, children: int, survivors: bool) -> Counter[str]:
    workdir = base / name
    _prepare(workdir, group)
    started = time.perf_counter()
    print(f"== {name}: mutating {', '.join(group.modules)}", flush=True)
    log = workdir / "mutmut-run.log"
    with log.open("w") as out:
        subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(children)],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    results = _results(workdir)
    elapsed = time.perf_counter() - started
    per_module: dict[str, Counter[str]] = {}
    for mutant, status in results.items():
        per_module.setdefault(_module_of(mutant), Counter())[status] += 1
    total: Counter[str] = Counter()
    print(f"   {'module':<40}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'score':>8}")
    for module, counts in sorted(per_module.items()):
        total.update(counts)
        _print_row(module, counts)
    _print_row("(all)", total)
    print(f"   time {elapsed:,.0f} s; log: {log}", flush=True)
    if survivors:
        kinds: Counter[str] = Counter()
        for mutant, status in sorted(results.items()):
            if status == "survived":
                kind, diff = _diff(workdir, mutant)
                kinds[kind] += 1
                print(f"   [{kind}] {mutant}\n{diff}")
        print(f"   survivors by kind: {dict(kinds)}", flush=True)
    return total


def _print_row(module: str, counts: Counter[str]) -> None:
    killed = sum(counts[s] for s in DETECTED)
    survived = counts["survived"]
    untested = counts["no tests"]
    mutants = sum(counts.values())
    score = killed / (killed + survived) if killed + survived else 1.0
    print(f"   {module:<40}{mutants:>8}{killed:>8}{survived:>9}{untested:>9}{score:>8.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(GROUPS))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--survivors", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    if not MUTMUT.exists():
        parser.error("mutmut is not installed: .venv/bin/pip install -e '.[mutation]'")
    names = args.module or list(GROUPS)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="agent-identity-mutation-"))
    print(f"work directory: {base}")
    grand: Counter[str] = Counter()
    for name in names:
        grand.update(run_group(name, GROUPS[name], base, args.max_children, args.survivors))
    print()
    _print_row("all groups", grand)
    return 0


if __name__ == "__main__":
    sys.exit(main())
