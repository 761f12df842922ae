"""Each package declares exactly what its code imports: an undeclared import works here only because the workspace
installs everything together (and breaks `pip install t2v-model` alone); a declared package nothing imports is
weight for every user. Imports guarded by `except ImportError`, or of a package an option turns on, may be named in an
extra instead."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """(dependencies, optional-dependencies of every extra) of a pyproject.toml, as normalised names."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = {requirement_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return {requirement_name(r) for r in project.get("dependencies", [])}, extras


def imports(files: list[Path]) -> tuple[set[str], set[str]]:
    """(top-level modules imported, those imported only inside a `try` that catches ImportError)."""
    required, optional = set(), set()

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            inner = guarded or any("ImportError" in c or "ModuleNotFoundError" in c for c in catches)
            for child in node.body:
                visit(child, inner)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            (optional if guarded else required).add(name.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    for path in files:
        visit(ast.parse(path.read_text(), str(path)), False)
    return required, optional - required


def distributions(modules: set[str], own: set[str], extras: set[str] = frozenset()) -> dict[str, str]:
    """{module: distribution} for the third-party and workspace modules among `modules` (an extra that is not
    installed, like wandb, is known by its name)."""
    known = importlib.metadata.packages_distributions()
    out = {}
    for module in modules - own - set(sys.stdlib_module_names) - {"__future__"}:
        if module.startswith("t2v_") or (module not in known and normalise(module) in extras):
            out[module] = normalise(module)  # workspace packages are installed editable: no RECORD of their modules
        else:
            assert module in known, f"{module}: imported but installed by no distribution"
            out[module] = normalise(known[module][0])
    return out


def check(name: str, pyproject: Path, files: list[Path], own: set[str]) -> None:
    deps, extras = declared(pyproject)
    required, optional = imports(files)
    needed = distributions(required, own, extras)
    # an import a config option turns on (a tracker) may come from an extra
    undeclared = sorted(f"{m} ({d})" for m, d in needed.items() if d not in deps | extras)
    assert not undeclared, f"{name}: imports undeclared in {pyproject}: {', '.join(undeclared)}"
    unused = sorted(deps - set(needed.values()))
    assert not unused, f"{name}: declared in {pyproject} but never imported: {', '.join(unused)}"
    unlisted = sorted(f"{m} ({d})" for m, d in distributions(optional, own, extras).items() if d not in deps | extras)
    assert not unlisted, f"{name}: optional imports in no extra of {pyproject}: {', '.join(unlisted)}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_package_declares_what_its_code_imports(package):
    files = sorted((package / "src").rglob("*.py"))
    own = {p.name for p in (package / "src").iterdir() if p.is_dir()}
    check(package.name, package / "pyproject.toml", files, own)


def test_the_pipelines_declare_what_they_import():
    check("pipelines", ROOT / "pyproject.toml", sorted((ROOT / "pipelines").glob("*.py")),
          {p.stem for p in (ROOT / "pipelines").glob("*.py")})
