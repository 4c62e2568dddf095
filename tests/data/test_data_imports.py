"""The data layer imports one way (config < sources < tokenizer < shards < prepare < packing): no module of
``biglm.data`` reaches another from inside a function to dodge a circle, and each imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import biglm.data

DATA = Path(biglm.data.__file__).parent
MODULES = sorted(p for p in DATA.glob("*.py") if p.name not in ("__init__.py", "cli.py"))  # cli: lazy handlers


def local_data_imports(path: Path) -> list[str]:
    """``module:line`` of every import of a ``biglm.data`` module inside a function of ``path``."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("biglm.data"):
                    out.append(f"{path.name}:{node.lineno}")
    return out


def test_no_function_local_imports_inside_the_data_layer() -> None:
    assert [hit for p in MODULES for hit in local_data_imports(p)] == []


def test_each_data_module_imports_alone() -> None:
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for p in MODULES:  # one fresh interpreter per module: nothing imported before it
        proc = subprocess.run([sys.executable, "-c", code, f"biglm.data.{p.stem}"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (p.name, proc.stderr[-2000:])


def test_prepare_data_is_still_exported() -> None:
    from biglm.data import PreparedData, prepare_data
    from biglm.data.prepare import PreparedData as Moved

    assert PreparedData is Moved and prepare_data.__module__ == "biglm.data.prepare"
