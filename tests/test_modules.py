"""The package's module boundaries: glmc modules import each other at the top, never inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import glmc

PACKAGE = Path(glmc.__file__).parent
# The command line imports each command's modules when the command runs, so `glmc --help` starts without torch.
LAZY_BY_DESIGN = {"cli.py"}


def function_level_glmc_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("glmc"):
                    found.append(f"{path.relative_to(PACKAGE)}:{inner.lineno} {node.name}() imports {inner.module}")
                elif isinstance(inner, ast.Import) and any(alias.name.startswith("glmc") for alias in inner.names):
                    found.append(f"{path.relative_to(PACKAGE)}:{inner.lineno} {node.name}() imports glmc")
    return found


def type_checking_glmc_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        guard = node.test if isinstance(node, ast.If) else None
        if (isinstance(guard, ast.Name) and guard.id == "TYPE_CHECKING") or (
                isinstance(guard, ast.Attribute) and guard.attr == "TYPE_CHECKING"):
            for inner in ast.walk(node):
                modules = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else (
                    [alias.name for alias in inner.names] if isinstance(inner, ast.Import) else [])
                found += [f"{path.relative_to(PACKAGE)}:{inner.lineno} imports {module} for type checking only"
                          for module in modules if module.startswith("glmc")]
    return found


def test_no_module_imports_glmc_inside_a_function():
    """An import inside a function to dodge a cycle means a boundary is in the wrong place (checkpoint.py used to read
    weights files through export.py, which imported checkpoint.py: glmc.weights now owns that format)."""
    found = [line for path in sorted(PACKAGE.rglob("*.py")) if path.name not in LAZY_BY_DESIGN
             for line in function_level_glmc_imports(path)]
    assert found == []


def test_no_module_imports_glmc_for_type_checking_only():
    """An `if TYPE_CHECKING:` import is the other way to hide a cycle from the test above: glmc modules that annotate
    with another's types import it like any other module."""
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in type_checking_glmc_imports(path)]
    assert found == []


def test_the_weights_format_has_one_owner_that_checkpoint_and_export_both_use():
    import glmc.checkpoint
    import glmc.export
    import glmc.weights

    assert glmc.checkpoint.load_weights is glmc.weights.load_weights
    assert glmc.export.save_weights is glmc.weights.save_weights
    assert not hasattr(glmc.export, "load_weights") and not hasattr(glmc.weights, "load_checkpoint")
