"""The guide's and the README's code stays true to the package: every Python block
compiles and every name it imports exists."""

from __future__ import annotations

import ast
import importlib
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "docs" / "langchain.md", ROOT / "integrations" / "langchain" / "README.md"]


def _blocks(path: Path) -> list[str]:
    found = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)
    return [textwrap.dedent(block) for block in found]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_compile_and_their_imports_exist(path: Path) -> None:
    blocks = _blocks(path)
    assert blocks
    for block in blocks:
        tree = compile(block, str(path), "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_the_documented_protect_arguments_exist() -> None:
    import inspect

    from langchain_agent_identity import protect

    text = DOCS[0].read_text()
    documented = set(re.findall(r"^\| `(\w+)`", text, flags=re.MULTILINE))
    documented |= {"user_key", "tenant_key"}
    parameters = set(inspect.signature(protect).parameters) - {"tool"}
    assert parameters == documented
