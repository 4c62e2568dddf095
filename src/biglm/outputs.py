"""The output guard: one rule for every verb that writes (``check_output``).

A verb names its output, the kind of output it writes and every path it reads (checkpoints, run folders, data
files, tokenizers, templates). Before anything is read or written:

- the output must not be, contain, or lie inside any input, compared as resolved paths (relative spellings,
  ``..`` and symlinks all count): replacing it would delete the input, writing into it would change it.
  Only kinds that add their own named files to a folder (``RESULTS``, e.g. ``CKPT/eval``) may lie inside one;
- a file output must not be a folder, a folder output must not be a file;
- an existing non-empty folder is written into or replaced only when it is the verb's own kind (it holds one of
  the kind's markers: ``config.yaml`` / ``checkpoints`` / ... for a run folder, ``meta.json`` for a
  checkpoint, ``config.json`` for a transformers folder). Another folder is never emptied, even with
  ``--force``; a kind that replaces its folder whole needs ``--force`` for its own kind too.

Files and folders are then written under a temporary name and renamed (``biglm.files``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from biglm.errors import BiglmError


@dataclass(frozen=True)
class OutputKind:
    """What a verb writes at ``--out``."""

    what: str
    """Its name in messages ("checkpoint", "run folder", ...)."""
    markers: tuple[str, ...] = ()
    """Folders: glob patterns, one of which a folder of this kind holds (none: any folder is accepted)."""
    replaces: bool = False
    """Folders: the whole folder is replaced (``--force`` for an existing one); else files are added to it."""
    inside_inputs: bool = False
    """May lie inside an input folder (it only adds its own named files there)."""
    file: bool = False
    """A file (replaced atomically, or appended to), not a folder."""
    example: str = ""
    """Files: a name to suggest when a folder is given instead."""


RUN = OutputKind("run folder", ("config.yaml", "metrics.jsonl", "checkpoints", "best", ".lock", "train.log"))
"""pretrain / finetune / align: continued with --resume, never replaced (``train.log``: compare's runs)."""
CHECKPOINT = OutputKind("checkpoint", ("meta.json",), replaces=True)
"""consolidate --out, expand, import-hf."""
HF_FOLDER = OutputKind("transformers folder", ("config.json",), replaces=True)
"""export-hf."""
COMPARE = OutputKind("compare folder", ("compare.json", "compare.md", "tasks", "*/train.log", "*/config.yaml"))
"""compare: its recipes' run folders, tasks, table and plot (reused when rerun)."""
RESULTS = OutputKind("results folder", inside_inputs=True)
"""evaluate, finetune --eval-only: named result files added to any folder (default CKPT/eval)."""
FILE = OutputKind("file", file=True, example="predictions.jsonl")
"""predict, reward, plot: one file, replaced atomically."""
ANSWERS = OutputKind("answers file", file=True, example="answers.jsonl")
"""annotate, judge (and their sampled-pairs cache): a JSONL file appended to."""


def local_paths(specs: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The local files and folders among ``specs``: empty values, ``hf:`` / ``py:`` names and URLs are
    dropped; a glob gives its folder."""
    out = []
    for spec in specs:
        text = os.fspath(spec) if spec is not None else ""
        if not text or text.startswith(("hf:", "py:")) or "://" in text:
            continue
        if glob.has_magic(text):
            parts = Path(text).parts
            text = str(Path(*parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))] or ["."]))
        out.append(Path(text))
    return out


_RELATIONS = ("is", "contains", "lies inside")  # the worst first: the one named when several apply


def _relation(target: Path, source: Path) -> str | None:
    if target == source:
        return "is"
    if target in source.parents:
        return "contains"
    if source in target.parents:
        return "lies inside"
    return None


def check_output(out: str | os.PathLike, kind: OutputKind, inputs: Iterable[str | os.PathLike | None] = (),
                 *, force: bool = False, flag: str = "--out") -> Path:
    """Refuse, with one ``BiglmError`` line, to write ``kind`` at ``out`` where that would overwrite or delete an
    input or a folder of another kind (see the module docstring). Returns ``out`` as a ``Path``."""
    out = Path(out)
    target = out.resolve()
    clashes = [(_RELATIONS.index(r), r, spec) for spec in local_paths(inputs)
               if (r := _relation(target, spec.resolve())) and not (r == "lies inside" and kind.inside_inputs)]
    if clashes:
        _, relation, spec = min(clashes, key=lambda c: c[0])
        harm = "writing there would change the source" if relation == "lies inside" else \
            "replacing it would delete the source"
        raise BiglmError(f"{flag} {out}: {relation} the source {spec}; {harm} (choose another {kind.what} path)")
    if kind.file:
        if target.is_dir():
            raise BiglmError(f"{flag} {out}: is a folder; expected the path of a {kind.what} to write (such as "
                             f"{out / kind.example})")
        return out
    if target.exists() and not target.is_dir():
        raise BiglmError(f"{flag} {out}: exists and is not a folder; expected the {kind.what} to write")
    if not target.is_dir() or not any(target.iterdir()) or not kind.markers:
        return out
    if not any(glob.glob(glob.escape(str(target)) + os.sep + m) for m in kind.markers):
        shown = ", ".join(m for m in kind.markers if not m.startswith("*"))
        raise BiglmError(f"{flag} {out}: not empty and not a {kind.what} (none of {shown}); biglm never empties or "
                         "replaces another kind of folder, even with --force: choose a new or empty folder")
    if kind.replaces and not force:
        raise BiglmError(f"{out}: exists and is not empty (pass --force to replace it)")
    return out


__all__ = ["ANSWERS", "CHECKPOINT", "COMPARE", "FILE", "HF_FOLDER", "RESULTS", "RUN", "OutputKind", "check_output",
           "local_paths"]
