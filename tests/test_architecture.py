"""The layer architecture, checked on the source (``ast``): every layer family owns its bound and its
plain form, so the audit and the exporter stay generic, and the layers depend on nothing above them.

- ``lipzoo/audit.py`` and ``lipzoo/export.py`` name no layer class of the table (no identifier,
  import or string), import no layer family's module and no private name of another module;
- no module of ``lipzoo/layers`` imports a lipzoo module outside ``lipzoo/layers`` (at module
  level or inside a function, with ``import``, ``from ... import`` or ``importlib.import_module``).

Adding a layer is then one file in ``lipzoo/layers`` and one row of ``LAYERS``.

Also checked here: only the families whose table row has ``paper_mode="option"`` take
``paper_compatible``; no comment, docstring or recipe points at a document outside the
repository; and no module of ``lipzoo`` is over 450 lines nor any function over 60 lines unless
``SIZE_ALLOWED`` lists it with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lipzoo.layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
LAYERS_DIR = ROOT / "lipzoo" / "layers"
GENERIC = ["lipzoo/audit.py", "lipzoo/export.py"]
CLASS_NAMES = sorted({cls.__name__ for spec in LAYERS.values() for cls in (spec.conv, spec.linear) if cls is not None})
FAMILY_MODULES = sorted({cls.__module__ for spec in LAYERS.values() for cls in (spec.conv, spec.linear)
                         if cls is not None})


def _resolve(package: str, module: str | None, level: int) -> str:
    """The absolute module of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in ``tree``, nested ones included;
    ``importlib.import_module`` / ``__import__`` of a constant name count as imports."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, _resolve(package, node.module, node.level), [a.name for a in node.names]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                target = node.args[0].value
                level = len(target) - len(target.lstrip("."))
                out.append((node.lineno, _resolve(package, target.lstrip(".") or None, level), []))
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_names_used(source: str) -> list[str]:
    """The layer class names of the table that ``source`` mentions: identifiers, imports or strings."""
    found = []
    words = re.compile(r"\b(" + "|".join(map(re.escape, CLASS_NAMES)) + r")\b")
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.alias):
            names = [node.name.rsplit(".", 1)[-1], node.asname or ""]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = words.findall(node.value)
        found += [f"line {getattr(node, 'lineno', '?')}: {n}" for n in names if n in CLASS_NAMES]
    return found


def generic_violations(source: str) -> list[str]:
    """What makes ``source`` (a module of the ``lipzoo`` package) not generic over the layer table."""
    bad = layer_names_used(source)
    for line, module, names in imported_modules(ast.parse(source), "lipzoo"):
        candidates = [module] + [f"{module}.{n}" for n in names]
        if any(c in FAMILY_MODULES for c in candidates):
            bad.append(f"line {line}: imports the layer family module {module} {names}")
        if _within(module, "lipzoo"):
            bad += [f"line {line}: imports the private name {n} from {module}" for n in names if n.startswith("_")]
    return bad


def layering_violations(source: str) -> list[str]:
    """Imports of lipzoo modules outside lipzoo.layers in ``source`` (a module of lipzoo.layers)."""
    bad = []
    for line, module, names in imported_modules(ast.parse(source), "lipzoo.layers"):
        if not _within(module, "lipzoo"):
            continue  # torch, numpy, the standard library
        targets = [module] if _within(module, "lipzoo.layers") else [f"{module}.{n}" for n in names] or [module]
        bad += [f"line {line}: imports {t}" for t in targets if not _within(t, "lipzoo.layers")]
    return bad


@pytest.mark.parametrize("path", GENERIC)
def test_audit_and_export_are_generic(path):
    assert CLASS_NAMES and all(m.startswith("lipzoo.layers.") for m in FAMILY_MODULES)
    assert generic_violations((ROOT / path).read_text()) == []


@pytest.mark.parametrize("path", sorted(p.name for p in LAYERS_DIR.glob("*.py")))
def test_layers_import_nothing_above_them(path):
    assert layering_violations((LAYERS_DIR / path).read_text()) == []


def test_the_checks_catch_violations():
    cls, family = LAYERS["cayley"].conv.__name__, LAYERS["cayley"].conv.__module__.rsplit(".", 1)[-1]
    assert generic_violations(f"from .layers.{family} import {cls}\n")
    assert generic_violations(f"from .layers import {family}\n")
    assert generic_violations(f"def f(m):\n    return isinstance(m, layers.{cls})\n")
    assert generic_violations(f"'''The bound of {cls}.'''\n")
    assert generic_violations("from .export import _DENSE\n")
    assert not generic_violations("from .layers import LipschitzModule\nfrom .layers._norms import matrix_norm\n")
    assert layering_violations("def f():\n    from ..audit import audit\n")
    assert layering_violations("from .. import registry\n")
    assert layering_violations("import lipzoo.export\n")
    assert layering_violations("import importlib\nimportlib.import_module('lipzoo.certify')\n")
    assert not layering_violations("from ._norms import matrix_norm\nfrom lipzoo.layers import _plain\nimport torch\n")


# --- paper_compatible: the table says which families have a paper mode -----------------------------
@pytest.mark.parametrize("layer_id", list(LAYERS))
def test_only_families_with_a_paper_mode_take_paper_compatible(layer_id):
    import inspect

    spec = LAYERS[layer_id]
    for cls in (spec.conv, spec.linear):
        if cls is not None:
            takes = "paper_compatible" in inspect.signature(cls).parameters
            assert takes == (spec.paper_mode == "option"), f"{cls.__name__} vs paper_mode={spec.paper_mode!r}"


@pytest.mark.parametrize("layer_id", list(LAYERS))
def test_models_accept_paper_compatible_as_the_table_says(layer_id):
    import lipzoo

    spec, arch = LAYERS[layer_id], f"convnet_xs_{layer_id}"
    plain = lipzoo.create_model(arch, paper_compatible=False)  # the default is accepted by every family
    if spec.paper_mode == "none":
        with pytest.raises(ValueError, match="no paper-compatible mode"):
            lipzoo.create_model(arch, paper_compatible=True)
        return
    paper = lipzoo.create_model(arch, paper_compatible=True)
    if spec.paper_mode == "same":  # a documented no-op: the very same model
        assert list(paper.state_dict()) == list(plain.state_dict()) and repr(paper) == repr(plain)


# --- texts point at nothing outside the repository ------------------------------------------------
#: pointers at documents that are not in the repository (built so this file does not match itself)
OUTSIDE = re.compile(r"\b(" + "|".join(["spe" + r"c \d", "DESI" + "GN", "refer" + r"ence\.md"]) + r")")


def test_no_text_points_at_a_document_outside_the_repository():
    paths = [p for d in ("lipzoo", "scripts", "recipes", "tests") for p in sorted((ROOT / d).rglob("*"))
             if p.is_file() and p.suffix in (".py", ".yaml", ".md")]
    paths += [ROOT / "hubconf.py", ROOT / "README.md"]
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in paths
             for i, line in enumerate(p.read_text().splitlines(), 1) for m in OUTSIDE.finditer(line)]
    assert found == []


def test_make_recipes_help_writes_nothing():
    import subprocess
    import sys

    before = {p: p.stat().st_mtime_ns for p in (ROOT / "recipes").rglob("*.yaml")}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_recipes.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--notes-only" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "recipes").rglob("*.yaml")} == before


# --- size: no long file, no long function --------------------------------------------------------
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60  #: from the ``def`` line to the last line of the body (docstring included)
#: ``"lipzoo/path.py"`` or ``"lipzoo/path.py:Qualified.name"`` -> why it may be longer; keep it short
SIZE_ALLOWED: dict[str, str] = {}  # none at present


def too_long(source: str, path: str) -> list[str]:
    """``path`` and its functions (methods and nested functions too) over the limits, as allow-list keys."""
    found = [f"{path} ({len(source.splitlines())} lines)"] if len(source.splitlines()) > MAX_FILE_LINES else []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{name} ({child.end_lineno - child.lineno + 1} lines)")
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_no_file_over_450_lines_and_no_function_over_60():
    found = [hit for p in sorted((ROOT / "lipzoo").rglob("*.py"))
             for hit in too_long(p.read_text(), p.relative_to(ROOT).as_posix())]
    assert [hit for hit in found if hit.split(" (")[0] not in SIZE_ALLOWED] == []
    # every allowed exception is still needed (and says why)
    assert all(reason.strip() for reason in SIZE_ALLOWED.values())
    assert sorted(SIZE_ALLOWED) == sorted(hit.split(" (")[0] for hit in found)


def test_the_size_check_catches_long_code():
    def lines(n: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    source = "class A:\n    def m(self):\n" + lines(MAX_FUNCTION_LINES, " " * 8) + "\n\ndef short():\n    return 1\n"
    assert too_long(source, "lipzoo/x.py") == [f"lipzoo/x.py:A.m ({MAX_FUNCTION_LINES + 1} lines)"]
    assert too_long("x = 1\n" * (MAX_FILE_LINES + 1), "lipzoo/y.py") == [f"lipzoo/y.py ({MAX_FILE_LINES + 1} lines)"]
    assert too_long("def f():\n" + lines(MAX_FUNCTION_LINES - 1, "    "), "lipzoo/z.py") == []  # the limit itself is fine
