"""The SDK's layering, checked on its source (issue 10: "the knot is gone").

- no import cycle among the modules of ``agent_identity``, counting every import: at module
  level, inside functions (lazy imports) and under ``TYPE_CHECKING``;
- lower layers never import higher ones (the order of ``LAYERS``, from the design guide);
- no module reads another module's private members (``obj._name`` where ``_name`` is not
  defined in the reading module): modules talk through public names only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "agent_identity"

#: Top to bottom: a module may import its own layer and the layers below it only.
LAYERS: list[tuple[str, ...]] = [
    ("agent_identity", "agent_identity.cli", "agent_identity.sync", "agent_identity.devidp"),
    ("agent_identity.client", "agent_identity.tools", "agent_identity.settings"),
    ("agent_identity.user",),
    ("agent_identity.mcp", "agent_identity.consent.web"),
    ("agent_identity.approval",),
    ("agent_identity.grant",),
    ("agent_identity.server", "agent_identity.delegation"),
    ("agent_identity.providers",),
    ("agent_identity.consent", "agent_identity.vault", "agent_identity.audit"),
    (
        "agent_identity._tasks",
        "agent_identity._resource_auth",
        "agent_identity._http",
        "agent_identity._guard",
        "agent_identity._netguard",
    ),
    ("agent_identity.oauth",),
    (
        "agent_identity.errors",
        "agent_identity.models",
        "agent_identity.clock",
        "agent_identity._limits",
        "agent_identity._version",
    ),
]

#: Private names of foreign libraries the SDK is allowed to touch, with the reason.
ALLOWED_FOREIGN_PRIVATE: dict[str, str] = {
    "_pool": "httpx2 transport: the SSRF-guarded connection pool replaces httpx2's own",
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for path in ROOT.rglob("*.py") if "node_modules" not in path.parts
    }


def _imports(name: str, tree: ast.AST) -> Iterator[str]:
    package = (
        name
        if (ROOT.parent / name.replace(".", "/") / "__init__.py").exists()
        else (name.rpartition(".")[0])
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            for alias in node.names:  # ``from pkg import submodule``
                yield f"{module}.{alias.name}"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in _imports(name, tree):
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of test_architecture.LAYERS")
    return best[1]


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        _layer_of(module)


def test_no_import_cycle() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of the design.
    edges = {a: {b for b in targets if not b.startswith(a + ".")} for a, targets in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append([*visiting[visiting.index(node) :], node])
            return
        visiting.append(node)
        for target in sorted(edges.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones() -> None:
    violations = []
    for module, targets in _graph().items():
        for target in targets:
            if target.startswith(module + "."):
                continue  # a package importing its own parts
            if _layer_of(target) < _layer_of(module):
                violations.append(f"{module} imports {target}")
    assert not violations, "\n".join(sorted(violations))


def _private_names_defined(tree: ast.AST, *, imports: bool = True) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias) and imports:
            names.add(node.asname or node.name.rpartition(".")[2])
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("_")
            and node.value.isidentifier()
        ):
            # __slots__ entries and names set with setattr / object.__setattr__
            names.add(node.value)
    return {n for n in names if n.startswith("_")}


def test_no_module_reads_another_modules_private_members() -> None:
    violations = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(), str(path))
        own = _private_names_defined(tree, imports=False)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "agent_identity"
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        violations.append(
                            f"{name}:{node.lineno} imports {node.module}.{alias.name}"
                        )
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if attr in own or attr in ALLOWED_FOREIGN_PRIVATE:
                continue
            violations.append(f"{name}:{node.lineno} reads .{attr}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    "module",
    ["agent_identity", "agent_identity.client", "agent_identity.server", "agent_identity.grant"],
)
def test_import_needs_no_optional_dependency(module: str) -> None:
    """``agent_identity`` imports without langchain, OpenTelemetry or database drivers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"import {module}\n"
        "bad = [m for m in ('langchain_core', 'langgraph', 'opentelemetry', 'psycopg', "
        "'psycopg_pool', 'IPython') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
