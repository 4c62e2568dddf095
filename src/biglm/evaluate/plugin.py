"""Make the stock ``lm_eval --model biglm`` command find this package's model.

lm-eval 0.4.13 resolves ``--model NAME`` in its own registry (``lm_eval.api.registry.model_registry``)
and never reads the ``lm_eval.models`` entry points declared in our ``pyproject.toml``; it imports no
user code before resolving the name. So something must add ``biglm`` to that registry inside the
``lm_eval`` process.

**Installed from a wheel** (``pip install biglm``), nothing is needed: the wheel carries the hook of way 3
below as a top-level ``biglm_lm_eval.pth`` (``setup.py`` writes it from ``PTH_LINE``), pip puts it into
site-packages and ``pip uninstall biglm`` removes it. An editable install (``pip install -e .``) does not
carry it; ``scripts/setup.sh`` runs way 3. The three ways, from least to most global:

1. In Python: ``import biglm.evaluate.lm_eval_model`` (registers the class), or pass
   ``BiGLMEvalModel(...)`` to ``lm_eval.simple_evaluate``. ``biglm evaluate`` does this.
2. ``python -m biglm.evaluate.plugin run --model biglm --model_args ... --tasks ...``: the lm-eval
   command line with the model registered first.
3. ``python -m biglm.evaluate.plugin install``: writes ``biglm_lm_eval.pth`` into site-packages. Its
   one line installs an import hook costing microseconds per interpreter start and importing nothing:
   when (and only if) a process imports ``lm_eval.api.registry``, it adds the built-in models' lazy
   entries and a lazy entry ``biglm -> biglm.evaluate.lm_eval_model:BiGLMEvalModel``. After that,
   plain ``lm_eval --model biglm`` works. ``uninstall`` removes the file; ``status`` tells.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

TARGET = "biglm.evaluate.lm_eval_model:BiGLMEvalModel"
PTH_NAME = "biglm_lm_eval.pth"

# Executed by site.py at start-up (a .pth line starting with "import"); must stay one line, no biglm import.
PTH_LINE = (
    "import sys; exec(\"class _BiglmLmEvalHook:\\n"
    " def find_spec(self, name, path=None, target=None):\\n"
    "  if name != 'lm_eval.api.registry': return None\\n"
    "  import importlib.machinery as m\\n"
    "  spec = m.PathFinder.find_spec(name, path)\\n"
    "  if spec is None or spec.loader is None: return None\\n"
    "  run = spec.loader.exec_module\\n"
    "  def exec_module(module):\\n"
    "   run(module)\\n"
    "   try:\\n"
    "    import lm_eval.models\\n"
    "    if 'biglm' not in module.model_registry: module.model_registry.register('biglm', target='"
    + TARGET + "')\\n"
    "   except Exception as e: print('biglm lm-eval hook:', e, file=sys.stderr)\\n"
    "  spec.loader.exec_module = exec_module\\n"
    "  return spec\\n"
    "sys.meta_path.insert(0, _BiglmLmEvalHook())\")\n"
)


def register() -> None:
    """Add ``biglm`` to lm-eval's model registry in this process (lazily; idempotent).

    The built-in models are registered first: lm-eval only adds them itself when its registry is
    empty, so registering ``biglm`` alone would hide ``hf`` and the others.
    """
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if "biglm" not in model_registry:
        model_registry.register("biglm", target=TARGET)


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def install(directory: str | Path | None = None) -> Path:
    """Write the start-up hook ``biglm_lm_eval.pth`` into ``directory`` (default: site-packages)."""
    path = Path(directory or site_packages()) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


def uninstall(directory: str | Path | None = None) -> bool:
    """Remove the hook; True if it was there."""
    path = Path(directory or site_packages()) / PTH_NAME
    if path.exists():
        path.unlink()
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biglm.evaluate.plugin",
                                     description="Register the biglm model with the lm_eval command line.")
    parser.add_argument("action", choices=["install", "uninstall", "status", "run"])
    parser.add_argument("--dir", default=None, help="folder for the .pth file (default: site-packages)")
    args, rest = parser.parse_known_args(argv)
    if args.action == "run":
        register()
        from lm_eval.__main__ import cli_evaluate

        sys.argv = ["lm_eval", *rest]
        cli_evaluate()
        return 0
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    where = Path(args.dir or site_packages()) / PTH_NAME
    if args.action == "install":
        print(f"wrote {install(args.dir)}: `lm_eval --model biglm` now works in this environment")
    elif args.action == "uninstall":
        print(f"removed {where}" if uninstall(args.dir) else f"{where}: not installed")
    else:
        print(f"{where}: {'installed' if where.exists() else 'not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
