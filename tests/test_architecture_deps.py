"""The import graph of the lipzoo package, read from the source with ``ast``: it has no cycle, and
every module depends only on its own level or the levels below.

The levels, bottom to top:

1. ``library``: ``_version``, ``_io``, ``_provenance``, ``_tiny_imagenet``, ``data``, ``data_config``, ``layers``,
   ``models``, ``audit``, ``export``, ``radius``, ``certify``;
2. ``registry``: architectures and pretrained entries;
3. ``hub``: finds, downloads and verifies weights files (``_hf_cache``: the Hugging Face side);
4. ``factory``: ``create_model``, an architecture with its weights;
5. ``zoo``: the tooling in ``lipzoo/zoo/`` (trainer, publishing, cards, benchmarks, plots, the
   paper importer);
6. ``cli``: the ``lipzoo`` command (the package ``lipzoo/cli/``, one module per group of commands);
7. ``root``: ``lipzoo/__init__.py``, which re-exports the public API; nothing imports it.

Every ``import`` and ``from ... import`` counts, at module level and inside functions, with
relative imports resolved; ``from pkg import name`` is an import of ``pkg.name`` when that is a
module. (Importing ``lipzoo.x`` also runs ``lipzoo/__init__.py``; such implicit imports of parent
packages are not edges of the graph.) lipzoo modules are imported inside a function only by the
CLI, which loads the zoo tooling when a command needs it.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lipzoo"

#: bottom to top; a module may import modules of its own level or of a level below
LEVELS: list[tuple[str, list[str]]] = [
    ("library", ["lipzoo._version", "lipzoo._io", "lipzoo._provenance", "lipzoo._tiny_imagenet", "lipzoo.data",
                 "lipzoo.data_config", "lipzoo.layers", "lipzoo.models", "lipzoo.audit", "lipzoo.export", "lipzoo.radius",
                 "lipzoo.certify"]),
    ("registry", ["lipzoo.registry"]),
    ("hub", ["lipzoo._hf_cache", "lipzoo.hub"]),
    ("factory", ["lipzoo.factory"]),
    ("zoo", ["lipzoo.zoo"]),
    ("cli", ["lipzoo.cli"]),
    ("root", ["lipzoo"]),
]
LIBRARY = [m for name, mods in LEVELS if name in ("library", "registry", "hub", "factory") for m in mods]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: every module of the package: name -> file
MODULES: dict[str, Path] = {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def within(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or lies in the package ``prefix`` (the root ``lipzoo`` only matches itself)."""
    return module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))


def level_of(module: str) -> int | None:
    """The index in :data:`LEVELS` of the level a module belongs to (None: no level names it)."""
    for i, (_, prefixes) in enumerate(LEVELS):
        if any(within(module, p) for p in prefixes):
            return i
    return None


# --- the graph ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "module level"
        return f"{self.source} -> {self.target} (line {self.line}, {where})"


def _known(name: str, modules: Collection[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: not a lipzoo module)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, source: str, modules: Collection[str], is_package: bool = False) -> list[Import]:
    """The imports of lipzoo modules in ``source`` (the text of ``module``), nested ones included."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST, depth: int) -> None:
        known = _known(target, modules)
        if known is not None:
            found.append(Import(module, known, node.lineno, depth > 0))

    def visit(node: ast.AST, depth: int) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, depth)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # ``from pkg import mod`` imports the module pkg.mod
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node, depth)
        inner = depth + isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source), 0)
    return found


def package_imports(modules: Mapping[str, Path] = MODULES) -> list[Import]:
    return [i for name, path in modules.items()
            for i in imports_of(name, path.read_text(), modules, is_package=path.name == "__init__.py")]


def graph_of(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    return graph


def find_cycle(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it has none (depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in graph}
    for start in sorted(graph):
        if color[start] != WHITE:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        color[start] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:  # every successor done
                color[path.pop()] = BLACK
                stack.pop()
            elif color.get(nxt, WHITE) == GREY:  # back to a module on the current path
                return path[path.index(nxt):] + [nxt]
            elif color.get(nxt, WHITE) == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def describe(cycle: list[str], imports: list[Import]) -> str:
    """A cycle with the import line of each of its edges."""
    edges = []
    for a, b in zip(cycle, cycle[1:]):
        first = next((i for i in imports if i.source == a and i.target == b), None)
        edges.append(str(first) if first else f"{a} -> {b}")
    return "import cycle:\n  " + "\n  ".join(edges)


def violations(imports: list[Import], importers: list[str], forbidden: list[str]) -> list[str]:
    """The imports by a module within ``importers`` of a module within ``forbidden``."""
    return [str(i) for i in imports if any(within(i.source, s) for s in importers)
            and any(within(i.target, f) for f in forbidden)]


IMPORTS = package_imports()
GRAPH = graph_of(IMPORTS)


# --- the package --------------------------------------------------------------------------------
def test_the_graph_covers_the_package():
    assert {"lipzoo", "lipzoo.registry", "lipzoo.hub", "lipzoo.factory", "lipzoo.cli", "lipzoo.zoo.training",
            "lipzoo.layers.aol", "lipzoo.models.convnet"} <= set(MODULES)
    assert {"lipzoo.hub", "lipzoo.registry"} <= GRAPH["lipzoo.factory"]  # relative imports are resolved
    assert "lipzoo.zoo.cards" in GRAPH["lipzoo.zoo.convert"]  # a sibling in the zoo package
    assert "lipzoo.registry" in GRAPH["lipzoo.zoo.cards"]  # ``from ..registry import``


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, describe(cycle, IMPORTS)


def test_every_module_has_a_level():
    assert [m for m in MODULES if level_of(m) is None] == []


def test_modules_import_only_their_level_or_below():
    up = [f"{i}: {LEVELS[level_of(i.source)][0]} imports {LEVELS[level_of(i.target)][0]}" for i in IMPORTS
          if level_of(i.target) > level_of(i.source)]
    assert up == []


def test_the_library_imports_no_zoo_tooling_and_no_cli():
    assert violations(IMPORTS, LIBRARY, ["lipzoo.zoo", "lipzoo.cli"]) == []


def test_the_pure_library_imports_no_registry_hub_or_factory():
    assert violations(IMPORTS, LEVELS[0][1], ["lipzoo.registry", "lipzoo.hub", "lipzoo.factory"]) == []


def test_registry_imports_neither_hub_nor_factory():
    assert violations(IMPORTS, ["lipzoo.registry"], ["lipzoo.hub", "lipzoo.factory"]) == []


def test_hub_does_not_import_factory():
    assert violations(IMPORTS, ["lipzoo.hub"], ["lipzoo.factory"]) == []


def test_nothing_imports_the_cli_or_the_package_root():
    assert [str(i) for i in IMPORTS if i.target == "lipzoo"
            or (within(i.target, "lipzoo.cli") and not within(i.source, "lipzoo.cli"))] == []


def test_only_the_cli_imports_inside_functions_and_only_the_zoo_tooling():
    lazy = [i for i in IMPORTS if i.in_function]
    assert [str(i) for i in lazy if not within(i.source, "lipzoo.cli") or not within(i.target, "lipzoo.zoo")] == []


# --- the checks themselves ----------------------------------------------------------------------
def test_the_cycle_detector_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    # the package's graph with one import added the wrong way round (registry -> factory)
    broken = {k: set(v) for k, v in GRAPH.items()} | {"lipzoo.registry": GRAPH["lipzoo.registry"] | {"lipzoo.factory"}}
    cycle = find_cycle(broken)
    assert cycle is not None and {"lipzoo.registry", "lipzoo.factory"} <= set(cycle)
    assert describe(cycle, IMPORTS).startswith("import cycle:")


@pytest.mark.parametrize("module, source, target, in_function", [
    ("lipzoo.registry", "def f():\n    from .hub import load_weights\n", "lipzoo.hub", True),
    ("lipzoo.registry", "from . import hub\n", "lipzoo.hub", False),
    ("lipzoo.hub", "import lipzoo.factory as f\n", "lipzoo.factory", False),
    ("lipzoo.zoo.cards", "from .. import registry\n", "lipzoo.registry", False),
    ("lipzoo.zoo.cards", "class C:\n    def m(self):\n        from .training import Recipe\n", "lipzoo.zoo.training", True),
    ("lipzoo.zoo.cards", "from ..layers.aol import AOLConv2d\n", "lipzoo.layers.aol", False),
    ("lipzoo.factory", "f = lambda: __import__('torch')\nfrom .registry import PRETRAINED\n", "lipzoo.registry", False),
])
def test_imports_are_resolved(module, source, target, in_function):
    (found,) = imports_of(module, source, MODULES)
    assert (found.target, found.in_function) == (target, in_function)


def test_the_layer_checks_catch_violations():
    bad = imports_of("lipzoo.hub", "def f():\n    from .factory import create_model\n", MODULES)
    assert violations(bad, ["lipzoo.hub"], ["lipzoo.factory"]) and bad[0].in_function
    bad = imports_of("lipzoo.export", "from .zoo.cards import render_card\n", MODULES)
    assert violations(bad, LIBRARY, ["lipzoo.zoo", "lipzoo.cli"])
    assert level_of("lipzoo.layers.aol") < level_of("lipzoo.registry") < level_of("lipzoo.hub") \
        < level_of("lipzoo.factory") < level_of("lipzoo.zoo.training") < level_of("lipzoo.cli") < level_of("lipzoo")
    assert level_of("lipzoo.nowhere") is None
