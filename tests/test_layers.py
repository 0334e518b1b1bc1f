"""The package's layering: the import-linter contracts hold, and no module imports its way back to itself
(counting imports inside functions and under TYPE_CHECKING)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists() and shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([str(exe if exe.exists() else "lint-imports")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_no_import_cycle_anywhere_in_the_package():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("autoprune")
    modules = sorted(graph.modules)
    for module in modules:
        for other in graph.find_modules_directly_imported_by(module):
            if other == module or other.startswith(module + "."):
                continue  # a package importing its own submodules
            if graph.chain_exists(importer=other, imported=module) and not module.startswith(other + "."):
                pytest.fail(f"import cycle: {module} -> {other} -> ... -> {module}")
