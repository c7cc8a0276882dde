"""Every ``pip install`` command the project shows installs OUR packages.

The name ``agent-identity`` on PyPI belongs to another project; ours are
``agent-identity-sdk`` and ``langchain-agent-identity``. This module finds every
``pip install ...`` command in the README files, ``docs/``, ``examples/``, ``benchmarks/``
and the SDK's own error messages, and resolves each one with pip for real
(``pip install --dry-run --report``), offline:

- our two wheels are built from this checkout into a temporary wheelhouse (hatchling);
- a throwaway virtual environment sees every third-party package of the test environment
  (a ``.pth`` file pointing at a link farm of its site-packages) but NOT our packages;
- pip runs ``--isolated --no-index --find-links <wheelhouse> --no-build-isolation``, so a
  name can only resolve to one of our wheels (or, for ``-e PATH``, to this checkout), and
  a dependency between our packages must be satisfied by the other wheel.

A command that names the other project's distribution, an extra we do not provide, or a
dependency range our versions do not meet fails with the file and line of the command.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LANGCHAIN = ROOT / "integrations" / "langchain"

#: our distributions -> their project directories
OURS = {"agent-identity-sdk": ROOT, "langchain-agent-identity": LANGCHAIN}
#: third-party packages the docs tell users to install for themselves (not resolved here)
THIRD_PARTY = {"jupyter"}

SOURCES = (
    "README.md",
    "docs/*.md",
    "integrations/langchain/README.md",
    "examples/**/*.py",
    "benchmarks/**/*.py",
    "agent_identity/**/*.py",
    "integrations/langchain/langchain_agent_identity/**/*.py",
)
_COMMAND = re.compile(r"\bpip install (?P<args>[^`\"\n]*)")
_END = re.compile(r"`|&&|\s#|\)|$")


@dataclass(frozen=True)
class InstallCommand:
    where: str  # file:line
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"pip install {shlex.join(self.args)}  ({self.where})"


def documented_commands() -> list[InstallCommand]:
    found: list[InstallCommand] = []
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            if "node_modules" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                for match in _COMMAND.finditer(line):
                    args = match.group("args")
                    end = _END.search(args)
                    assert end is not None
                    words = shlex.split(args[: end.start()])
                    where = f"{path.relative_to(ROOT)}:{number}"
                    found.append(InstallCommand(where, tuple(words)))
    return found


COMMANDS = documented_commands()


def _targets(command: InstallCommand) -> list[tuple[str, str]]:
    """``(kind, value)`` per requirement: ``("path", dir)`` or ``("name", requirement)``."""
    targets: list[tuple[str, str]] = []
    words = list(command.args)
    while words:
        word = words.pop(0)
        if word in ("-e", "--editable"):
            targets.append(("path", words.pop(0)))
        elif word.startswith("-"):
            assert word in ("-q", "--quiet", "-U", "--upgrade"), f"unexpected option {word}"
        elif word.startswith((".", "/")) or "/" in word.split("[")[0]:
            targets.append(("path", word))
        else:
            targets.append(("name", word))
    return targets


# -- the offline resolver ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    for project in OURS.values():
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
            cwd=project,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out


def _ours(entry: Path) -> bool:
    name = entry.name.lower()
    if name.startswith(("__editable__", "_editable_impl_")):
        return True
    if name.endswith((".dist-info", ".egg-info")):
        return canonicalize_name(name.split("-", 1)[0]) in {*OURS, "agent-identity"}
    return name.split(".")[0] in ("agent_identity", "langchain_agent_identity")


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the test environment's third-party packages, without
    ours; returns its interpreter."""
    base = tmp_path_factory.mktemp("install-env")
    venv.create(base / "env", with_pip=False, symlinks=True)
    farm = base / "site"
    farm.mkdir()
    paths = sysconfig.get_paths()
    for directory in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in Path(directory).iterdir():
            if not _ours(entry) and not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry)
    python = base / "env" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site).mkdir(parents=True, exist_ok=True)
    (Path(site) / "test-environment.pth").write_text(f"{farm}\n")
    return python


def resolve(
    command: InstallCommand, python: Path, wheelhouse: Path, report: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """``pip install --dry-run`` the command's requirements, offline, from our wheels."""
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "--isolated",
            "install", "--dry-run", "--quiet", "--report", str(report),
            "--no-index", "--find-links", str(wheelhouse), "--no-build-isolation",
            *(word for word in command.args if word not in ("-q", "--quiet")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    data = json.loads(report.read_text()) if result.returncode == 0 else None
    return result, data


def _extras(requirement: str) -> set[str]:
    match = re.search(r"\[([^\]]*)\]$", requirement)
    return {canonicalize_name(e) for e in match.group(1).split(",")} if match else set()


def check_resolves_to_ours(
    command: InstallCommand, python: Path, wheelhouse: Path, report: Path
) -> None:
    result, data = resolve(command, python, wheelhouse, report)
    assert result.returncode == 0, (
        f"{command} does not resolve to our packages:\n{result.stderr[-3000:]}"
    )
    assert data is not None
    installed = {canonicalize_name(item["metadata"]["name"]): item for item in data["install"]}
    strangers = set(installed) - set(OURS)
    assert not strangers, f"{command} would install {strangers}"
    for name, item in installed.items():
        url: str = item["download_info"]["url"]
        assert url.startswith((wheelhouse.as_uri(), OURS[name].as_uri())), (command, url)
    for kind, value in _targets(command):
        if kind == "path":
            project = (ROOT / value.split("[")[0]).resolve()
            (name,) = [n for n, d in OURS.items() if d == project] or [None]
            assert name is not None, f"{command}: {value} is not one of our projects"
        else:
            name = canonicalize_name(Requirement(value).name)
        assert name in installed, f"{command}: {name} was not installed"
        provided = set(installed[name]["metadata"].get("provides_extra", []))
        missing = _extras(value) - provided
        assert not missing, f"{command}: {name} has no extra {missing} (it has {provided})"


# -- the tests ------------------------------------------------------------------------------


def test_the_install_commands_are_found() -> None:
    """The search below is not vacuous: it finds the commands we know of."""
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/langchain.md", "docs/vault-postgres.md"} <= where
    assert "agent_identity/vault/vault.py" in where  # the error message of a missing driver
    assert any(c.args == ("agent-identity-sdk",) for c in COMMANDS)
    assert any("-e" in c.args for c in COMMANDS)  # the set-up commands of the README


def _ids() -> Iterator[Any]:
    for command in COMMANDS:
        targets = _targets(command)
        names = {canonicalize_name(Requirement(v).name) for k, v in targets if k == "name"}
        paths = [v for k, v in targets if k == "path"]
        if names and names <= THIRD_PARTY and not paths:
            continue  # somebody else's package, installed from the index by the user
        yield pytest.param(command, id=command.where)


@pytest.mark.parametrize("command", list(_ids()))
def test_documented_install_command_installs_our_packages(
    command: InstallCommand, bare_env: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    check_resolves_to_ours(command, bare_env, wheelhouse, tmp_path / "report.json")


@pytest.mark.parametrize(
    "args",
    [
        ("agent-identity",),  # the other project's distribution
        ("agent-identity-sdk[no-such-extra]",),
        ("-e", "tests"),  # not one of our projects
    ],
)
def test_a_wrong_install_command_is_caught(
    args: tuple[str, ...], bare_env: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """The check fails for the mistakes it exists for (so it cannot pass vacuously)."""
    command = InstallCommand("synthetic", args)
    with pytest.raises(AssertionError):
        check_resolves_to_ours(command, bare_env, wheelhouse, tmp_path / "report.json")


def test_the_langchain_package_depends_on_our_sdk_with_a_range(wheelhouse: Path) -> None:
    import zipfile

    (wheel,) = wheelhouse.glob("langchain_agent_identity-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    requirements = [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    names = {canonicalize_name(r.name) for r in requirements}
    assert "agent-identity" not in names
    (sdk,) = [r for r in requirements if canonicalize_name(r.name) == "agent-identity-sdk"]
    from agent_identity import __version__

    assert sdk.specifier.contains(__version__)
    assert any(spec.operator == "<" for spec in sdk.specifier)  # an upper bound
