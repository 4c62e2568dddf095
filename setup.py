"""Build step beyond pyproject.toml: ship the lm-eval registration hook at the top of the wheel.

lm-eval 0.4 reads no plugin entry points, so ``lm_eval --model biglm`` needs one line run at interpreter
start-up (see ``biglm.evaluate.plugin``). A ``.pth`` file at the top of the wheel lands in site-packages,
where ``site`` runs it; pip records it, so ``pip uninstall biglm`` removes it again. The line itself is
read from ``plugin.py`` without importing biglm (the build environment has no torch).
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PLUGIN = runpy.run_path(str(HERE / "src" / "biglm" / "evaluate" / "plugin.py"))


class BuildWithHook(build_py):
    """``build_py`` that also writes ``biglm_lm_eval.pth`` next to the ``biglm`` package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / PLUGIN["PTH_NAME"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PLUGIN["PTH_LINE"])

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PLUGIN["PTH_NAME"])]


setup(cmdclass={"build_py": BuildWithHook})
