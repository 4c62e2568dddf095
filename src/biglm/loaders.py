"""Loading files that others wrote, with one-line errors and without running anything they carry.

- ``load_pickle``: a ``.pt`` / ``.bin`` file through ``torch.load(weights_only=True)``: tensors and plain data
  only. A whole pickle that asks for more (a ``__reduce__`` calling ``os.system``, any other object) is
  "refused: not a safe format"; one that cannot be read through (cut short, bytes changed) is "truncated or
  damaged". The two are told apart by reading the pickle's opcodes (``pickletools``; nothing executes).
- ``load_tokenizer_folder``: a saved tokenizer, ``trust_remote_code`` off, its JSON files read by
  ``biglm.textio``'s rules first so that a damaged ``tokenizer.json`` is named with its line.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from biglm.errors import BiglmError
from biglm.textio import parse_json


def load_tokenizer_folder(folder: Path) -> Any:
    """The tokenizer saved in ``folder`` (never running code shipped with it), with one-line errors: its JSON
    files are read by ``biglm.textio``'s rules first, so a damaged one is named with its line."""
    from transformers import AutoTokenizer

    for path in sorted(Path(folder).glob("*.json")):
        parse_json(path.read_bytes(), str(path), at_line=True)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # tokenizers' and transformers' errors about a folder's content: one line for the user
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BiglmError(f"{folder}: the tokenizer cannot be loaded ({msg})") from None


def load_pickle(path: Path) -> Any:
    """A ``.pt`` / ``.bin`` file of tensors and plain data (``torch.load(weights_only=True)``: nothing in it
    runs), with one-line errors: "refused: not a safe format" for a whole pickle that asks for more (code to
    run, other objects), "truncated or damaged" for one that cannot be read at all."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _whole_pickle(path):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|GLOBAL ([\w.]+) whose module", str(e))
            what = f"it asks for {found.group(1) or found.group(2)}" if found else \
                "it asks for more than tensors and plain data"
            raise BiglmError(f"{path}: refused: not a safe format ({what}; biglm loads only tensors and plain "
                             "data from pickles, and runs no code from them)") from None
        raise BiglmError(f"{path}: cannot be read, truncated or damaged") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise BiglmError(f"{path}: cannot be read, truncated or damaged ({msg})") from None


def _whole_pickle(path: Path) -> bool:
    """True when the pickle in ``path`` (the file, or a torch zip's ``data.pkl``) reads through to its end."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = Path(path).read_bytes()
        return [op.name for op, _, _ in pickletools.genops(io.BytesIO(data))][-1] == "STOP"
    except Exception:  # anything unreadable is damage, not a refusal
        return False

