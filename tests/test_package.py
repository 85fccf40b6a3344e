"""The public surface: ``import sbnkit`` stays light (numba and matplotlib load on first use)."""

import subprocess
import sys


def test_import_sbnkit_loads_neither_numba_nor_matplotlib():
    code = (
        "import sys, sbnkit, sbnkit.deploy, sbnkit.kernels, sbnkit.train\n"
        "heavy = [m for m in ('numba', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
