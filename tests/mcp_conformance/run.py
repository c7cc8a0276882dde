"""Run the official MCP conformance suite's client scenarios against ``client.py``.

::

    python tests/mcp_conformance/run.py                 # every client scenario
    python tests/mcp_conformance/run.py -k auth/scope   # those whose name contains this
    python tests/mcp_conformance/run.py --command "python other_client.py" --json out.json

Each scenario is one run of the suite's own command line in single-scenario mode
(``conformance client --command ... --scenario NAME``), several at a time. A scenario
passes when the suite says so (exit 0, ``OVERALL: PASSED``): no failed check, no
warning, no timeout, and a client exit code of 0 unless the scenario accepts an error.
One line is printed per scenario, then ``N/22 auth scenarios passed``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent


def _load_install() -> Any:
    """``install.py`` next to this file, imported by path (this directory is no package)."""
    name = "agent_identity_mcp_conformance_install"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, HERE / "install.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


install = _load_install()
ensure_installed = install.ensure_installed
node_binary = install.node_binary
suite_cli = install.suite_cli
CLIENT: Final = HERE / "client.py"
#: Per-scenario client timeout given to the suite (its default), milliseconds.
SCENARIO_TIMEOUT_MS: Final = 30_000


@dataclass
class Result:
    scenario: str
    passed: bool
    seconds: float
    exit_code: int
    #: ``FAILURE``/``WARNING`` checks: ``"<status> <id>: <description>"``.
    problems: list[str] = field(default_factory=list)
    #: the client's last ``FAILED:`` line, if any.
    client_error: str | None = None
    timed_out: bool = False
    result_dir: str | None = None

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = f"{verdict}  {self.scenario:<45} {self.seconds:5.1f}s"
        if not self.passed:
            detail = self.client_error or (self.problems[0] if self.problems else "")
            if self.timed_out:
                detail = f"timed out; {detail}"
            if detail:
                text += f"  {detail[:160]}"
        return text


def default_command() -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(CLIENT))}"


def list_scenarios(install: Path) -> list[str]:
    """The client scenarios, as the suite lists them."""
    out = subprocess.run(
        [node_binary(install), str(suite_cli(install)), "list", "--client"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names: list[str] = []
    section = False
    for line in out.splitlines():
        if line.startswith("Client scenarios"):
            section = True
            continue
        if section and line.strip().startswith("- "):
            names.append(line.strip()[2:].split(" [", 1)[0].strip())
        elif section and line.strip() and not line.startswith(" "):
            section = False
    return names


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MCP_CONFORMANCE_CONTEXT", None)
    env.pop("MCP_CONFORMANCE_SCENARIO", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_one(install: Path, scenario: str, command: str, out_dir: Path) -> Result:
    target = out_dir / scenario.replace("/", "__")
    started = time.monotonic()
    done = subprocess.run(
        [
            node_binary(install),
            str(suite_cli(install)),
            "client",
            "--command",
            command,
            "--scenario",
            scenario,
            "--timeout",
            str(SCENARIO_TIMEOUT_MS),
            "-o",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_MS / 1000 + 60,
        env=_env(),
        check=False,
    )
    seconds = time.monotonic() - started
    checks: list[dict[str, Any]] = []
    client_stderr = ""
    result_dir = None
    for path in sorted(target.rglob("checks.json")):
        result_dir = str(path.parent)
        checks = json.loads(path.read_text())
        stderr_file = path.parent / "stderr.txt"
        client_stderr = stderr_file.read_text() if stderr_file.exists() else ""
    problems = [
        f"{c['status']} {c['id']}: {c.get('errorMessage') or c.get('description', '')}"
        for c in checks
        if c.get("status") in ("FAILURE", "WARNING")
    ]
    client_error = None
    for line in client_stderr.splitlines():
        if line.startswith("FAILED:"):
            client_error = line
    return Result(
        scenario=scenario,
        passed=done.returncode == 0,
        seconds=seconds,
        exit_code=done.returncode,
        problems=problems,
        client_error=client_error,
        timed_out="CLIENT TIMED OUT" in done.stderr,
        result_dir=result_dir,
    )


def run_scenarios(
    scenarios: Iterable[str],
    *,
    command: str | None = None,
    jobs: int = 4,
    out_dir: Path | None = None,
    install: Path | None = None,
    on_result: Any = None,
) -> list[Result]:
    """Run ``scenarios`` (``jobs`` at a time); results in the given order."""
    install = install or ensure_installed()
    command = command or default_command()
    out = out_dir or Path(tempfile.mkdtemp(prefix="mcp-conformance-"))
    names = list(scenarios)
    results: dict[str, Result] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_one, install, name, command, out): name for name in names}
        for future, name in futures.items():
            results[name] = future.result()
            if on_result is not None:
                on_result(results[name])
    return [results[name] for name in names]


def summary(results: Sequence[Result]) -> str:
    auth = [r for r in results if r.scenario.startswith("auth/")]
    other = [r for r in results if not r.scenario.startswith("auth/")]
    lines = []
    if other:
        lines.append(f"{sum(r.passed for r in other)}/{len(other)} non-auth scenarios passed")
    lines.append(f"{sum(r.passed for r in auth)}/{len(auth)} auth scenarios passed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="filter", default="", help="run scenarios containing this")
    parser.add_argument("--command", default=None, help="client command (default: client.py)")
    parser.add_argument("-j", "--jobs", type=int, default=4, help="scenarios run at a time")
    parser.add_argument("--out", type=Path, default=None, help="keep the suite's results here")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every problem")
    args = parser.parse_args(argv)
    install = ensure_installed()
    names = [n for n in list_scenarios(install) if args.filter in n]
    print(f"{len(names)} client scenarios, {args.jobs} at a time", flush=True)
    started = time.monotonic()

    def show(result: Result) -> None:
        print(result.line(), flush=True)
        if args.verbose and not result.passed:
            for problem in result.problems:
                print(f"        {problem[:300]}")

    results = run_scenarios(
        names,
        command=args.command,
        jobs=args.jobs,
        out_dir=args.out,
        install=install,
        on_result=show,
    )
    print(summary(results))
    print(f"total {time.monotonic() - started:.1f}s")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
