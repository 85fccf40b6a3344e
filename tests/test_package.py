"""The public surface: ``import sbnkit`` stays light (numba and matplotlib load on first use),
every module declares ``__all__``, and no module imports another's private names."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import sbnkit


def test_import_sbnkit_loads_neither_numba_nor_matplotlib():
    code = (
        "import sys, sbnkit, sbnkit.deploy, sbnkit.kernels, sbnkit.train\n"
        "heavy = [m for m in ('numba', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _modules() -> list[str]:
    root = Path(sbnkit.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_its_public_names(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects: {missing}"


def _private_imports(path: Path) -> list[str]:
    """The private names in ``from <sbnkit module> import _name`` statements (dunders aside)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or "sbnkit" in (node.module or "")):
            found += [
                a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
            ]
    return found


@pytest.mark.parametrize("name", _modules())
def test_no_module_imports_another_modules_private_names(name):
    module = importlib.import_module(name)
    found = _private_imports(Path(module.__file__))
    allowed = {"_jit", "_fused_jit", "_checks"}  # private submodules of the importing package
    assert not [f for f in found if f not in allowed], f"{name} imports private names: {found}"
