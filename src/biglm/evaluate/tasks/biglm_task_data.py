"""Loads this folder's JSONL files for lm-eval (data_files are relative to this folder)."""
from pathlib import Path

import datasets


def load(data_files=None, **_):
    here = Path(__file__).resolve().parent
    files = {split: str(here / name) for split, name in (data_files or {}).items()}
    return datasets.load_dataset("json", data_files=files)
