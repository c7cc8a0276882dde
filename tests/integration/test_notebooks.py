"""The demo notebooks in ``examples/notebooks`` run top to bottom, headless, for real.

Each notebook starts the local authorization server itself (first cell) and stops it
(last cell); this test executes every cell with ``nbclient`` in an IPython kernel on this
interpreter, in the environment of a fresh machine (no ``AGENT_IDENTITY_*`` settings, a
throwaway user data directory), and fails with the failing cell's traceback. The
notebooks are stored without outputs; a test keeps them that way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from agent_identity.devidp import DevIdP

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "examples" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_consent_and_tool_tokens.ipynb",
    "02_elevation_and_step_up.ipynb",
    "03_ciba_approval.ipynb",
    "04_token_exchange_and_delegation.ipynb",
    "05_audit_trail.ipynb",
    "06_langchain_agent.ipynb",
]
CELL_TIMEOUT = 120  # seconds, per cell
KERNEL_NAME = "agent-identity-notebook-test"
#: Where the dev server's npm packages are installed is not an SDK setting: keep it.
KEEP = frozenset({"AGENT_IDENTITY_DEVIDP_HOME"})
#: Run if a cell failed, so that a failing notebook does not leave its server running.
STOP_SERVER = "if 'idp' in globals():\n    idp.stop()"


def _kernel_manager(spec_dir: Path) -> AsyncKernelManager:
    """A kernel on THIS interpreter (the venv's), whatever kernelspecs the machine has.

    A ``python3`` kernelspec of the user (``~/.local/share/jupyter``) or of the system
    would take precedence over the venv's and may point at another Python, so the test
    writes its own spec, with ``sys.executable``, into a directory only it uses.
    """
    kernel_dir = spec_dir / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "agent-identity notebook test",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _fresh_machine_environment(home: Path) -> dict[str, str]:
    """No vault or client configured (a notebook must not depend on the developer's
    settings), the user data directory in a temporary place (a notebook that fell back to
    the embedded SQLite vault would write there, never in the real one), and a fresh
    IPython profile (no startup scripts or configuration of the developer's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_IDENTITY_") or k in KEEP}
    env["XDG_DATA_HOME"] = str(home / "data")
    env["IPYTHONDIR"] = str(home / "ipython")
    return env


def _failed_cell(nb: Any) -> int | None:
    """The index (from 0, markdown cells counted) of the first cell with an error."""
    for index, cell in enumerate(nb.cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", ())):
            return index
    return None


def _plain(error: CellExecutionError) -> str:
    """nbclient's message (the cell's source and the traceback) without ANSI colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def test_the_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path: Path) -> None:
    """No outputs, no execution counts: small diffs, no tokens or ports in the repo."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [], f"{path.name}: stored with outputs"
        assert cell.execution_count is None, f"{path.name}: stored with execution counts"
    sources = [c.source for c in code]
    assert "DevIdP(" in sources[0], "the first cell starts the dev server"
    assert "idp.start()" in sources[0], "the first cell starts the dev server"
    assert "idp.stop()" in sources[-1], "the last cell stops the dev server"
    assert not any("from tests" in s or "import _" in s for s in sources)


@pytest.mark.idp
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path: Path, dev_idp: DevIdP, tmp_path: Path) -> None:
    # ``dev_idp`` is unused but requested on purpose: it installs the dev server's npm
    # packages once (outside the cell timeout) and skips or fails like the other
    # integration tests when Node.js is missing. Each notebook starts its own server.
    del dev_idp
    cwd = tmp_path / "cwd"  # the notebooks write only to their own temporary directories
    cwd.mkdir()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "jupyter"),
        timeout=CELL_TIMEOUT,
        interrupt_on_timeout=True,
        shutdown_kernel="graceful",
        resources={"metadata": {"path": str(cwd)}},
    )
    failure: CellExecutionError | None = None
    env = _fresh_machine_environment(tmp_path / "home")
    with client.setup_kernel(env=env, cleanup_kc=True):
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
        except CellExecutionError as exc:
            failure = exc
            cleanup = nbformat.v4.new_code_cell(STOP_SERVER)
            nb.cells.append(cleanup)
            # if this fails too, the kernel's atexit hook (first cell) stops the server
            with contextlib.suppress(CellExecutionError):
                client.execute_cell(cleanup, len(nb.cells) - 1)
    if failure is not None:
        pytest.fail(
            f"{path.name}: cell {_failed_cell(nb)} failed: {_plain(failure)}", pytrace=False
        )
    assert not list(cwd.iterdir()), "a notebook wrote into its working directory"
