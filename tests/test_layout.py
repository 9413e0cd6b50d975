"""The layout holds: no import cycle inside captioner/ (imports inside functions count too), no two
packages that import each other (a top-level module counts as a package), each
subpackage's docstring says what it holds and what it may import, and its modules import nothing else."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "captioner"
SUBPACKAGES = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every captioner module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                         for alias in node.names)
    return {name for name in found if name in MODULES and name != "captioner"}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_there_is_no_import_cycle():
    done, active = set(), []

    def visit(name: str) -> None:
        if name in active:
            pytest.fail("import cycle: " + " -> ".join(active[active.index(name):] + [name]))
        if name in done:
            return
        active.append(name)
        for imported in sorted(GRAPH[name]):
            visit(imported)
        active.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def package_of(module: str) -> str:
    """captioner.rnn.cells -> captioner.rnn; a top-level module (captioner.model) is a package of its own."""
    return ".".join(module.split(".")[:2])


def test_no_two_packages_import_each_other():
    edges = {(package_of(name), package_of(target)) for name, imported in GRAPH.items() for target in imported}
    mutual = sorted(f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges)
    assert not mutual, f"packages that import each other (an arrow points up): {', '.join(mutual)}"


def allowed_imports(subpackage: str) -> set[str]:
    """The `May import:` line(s) of the subpackage's docstring, as module or subpackage names."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / subpackage / "__init__.py").read_text(encoding="utf-8")))
    assert docstring and len(docstring.splitlines()) >= 3, f"captioner/{subpackage}: say what it holds"
    match = re.search(r"^May import: (.*?)(?:\n\n|\Z)", docstring, flags=re.MULTILINE | re.DOTALL)
    assert match, f"captioner/{subpackage}/__init__.py: no 'May import:' line"
    return set(re.findall(r"captioner(?:\.\w+)+", match.group(1)))


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_subpackage_imports_only_what_its_docstring_allows(subpackage):
    allowed = allowed_imports(subpackage) | {f"captioner.{subpackage}"}
    for name, imported in GRAPH.items():
        if not name.startswith(f"captioner.{subpackage}."):
            continue
        for target in imported:
            room = ".".join(target.split(".")[:2])  # captioner.rnn.cells -> captioner.rnn
            assert room in allowed or target in allowed, f"{name} imports {target}; captioner/{subpackage} may not"


def test_the_demo_is_imported_by_nothing_else_in_captioner():
    users = [name for name, imported in GRAPH.items() if not name.startswith("captioner.demo")
             and any(target.startswith("captioner.demo") for target in imported)]
    assert not users


def test_subpackage_init_files_import_nothing():
    """Importing captioner.rnn must not drag in the rest: the __init__ files are docstrings only."""
    for subpackage in SUBPACKAGES:
        tree = ast.parse((PACKAGE / subpackage / "__init__.py").read_text(encoding="utf-8"))
        if subpackage == "data":
            continue  # data/__init__ is the dataset front door: load_dataset over its readers
        assert not [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))], subpackage


def test_no_generated_stub_is_kept_beside_a_module():
    """Gradio writes a .pyi stub beside a module that subclasses one of its components (the demo's upload
    field); type checkers would read that stale stub instead of the code, so none is ever committed."""
    tracked = subprocess.run(["git", "ls-files", "*.pyi"], cwd=REPO, capture_output=True, text=True, check=True)
    assert tracked.stdout.split() == []
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "captioner/demo/app.pyi"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must ignore generated stubs"
