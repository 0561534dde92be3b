"""The layering docs/architecture.md draws, checked on the source: no module imports from a
layer above its own, no import circles, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LLMD = Path(__file__).resolve().parents[2] / "llmd"

# Bottom to top. A module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "ground floor",
        [
            "llmd",
            "llmd.errors",
            "llmd.record",
            "llmd.body",
            "llmd.parser_process",
            "llmd.cpu",
            "llmd.explain",
            "llmd.units",
            "llmd.settings",
            "llmd.settings_file",
            "llmd.settings_provider",
            "llmd.gguf",
            "llmd.templates",
            "llmd.watch",
        ],
    ),
    ("engine", ["llmd.engine"]),
    ("protocol", ["llmd.sampling", "llmd.tools", "llmd.protocol", "llmd.plan", "llmd.quantize"]),
    ("models", ["llmd.models"]),
    ("observers", ["llmd.auth", "llmd.usage", "llmd.metrics", "llmd.logs", "llmd.cache"]),
    ("serving", ["llmd.serving"]),
    ("server", ["llmd.server", "llmd.console", "llmd.systemd"]),
    ("process", ["llmd.daemon", "llmd.cli", "llmd.__main__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(LLMD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return rank


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every llmd import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "llmd":
                out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "llmd":
                    out.append((alias.name, [], node.lineno))
    return out


SOURCES = sorted(LLMD.rglob("*.py"))
MODULES = {module_name(p): p for p in SOURCES}


def resolve(module: str, names: list[str]) -> list[str]:
    """`from llmd.engine import messages` names the module llmd.engine.messages."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_import_from_a_layer_above(path: Path) -> None:
    here = module_name(path)
    for module, names, line in imports(path):
        for target in resolve(module, names):
            assert layer_of(target) <= layer_of(here), (
                f"{path}:{line}: {here} ({LAYERS[layer_of(here)][0]}) imports {target} "
                f"({LAYERS[layer_of(target)][0]}, a layer above)"
            )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_private_names_across_modules(path: Path) -> None:
    for module, names, line in imports(path):
        private = [
            n
            for n in names
            if n.startswith("_") and not n.startswith("__") and f"{module}.{n}" not in MODULES
        ]
        assert not private, f"{path}:{line}: imports private {private} from {module}"


def test_no_import_circles() -> None:
    graph = {
        name: {t for m, ns, _ in imports(p) for t in resolve(m, ns) if t in MODULES and t != name}
        for name, p in MODULES.items()
    }
    # A package's __init__ re-exporting its own modules is not a circle of behaviour.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
