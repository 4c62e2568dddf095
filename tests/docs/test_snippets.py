"""The runnable snippets of the documentation (docs/snippets/*.sh) run as written, at micro scale, so the docs
cannot drift from the code: the tutorials include these files, and the README's quick tour is
docs/snippets/quick_tour.sh verbatim.

A module fixture builds what ``scripts/demo.sh`` leaves behind, in miniature, in a temporary folder laid out like
the repository (``data/demo`` with a Wikipedia-like corpus, a Shakespeare-like one and a tokenizer; ``runs/demo``,
a micro masked model pretrained a few steps, with its ``tasks/`` and ``titles/``; ``configs/`` linked to the
repository's). The scripts then run there with ``bash``, side by side, the ``biglm`` command of this
interpreter's environment first on PATH and small sizes given through their environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from biglm.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "snippets"
QUICK_TOUR_MARKER = "<!-- quick-tour: docs/snippets/quick_tour.sh -->"

ADJECTIVES = ["Red", "Blue", "Green", "Old", "New", "Great", "Little", "North", "South", "High"]
NOUNS = ["River", "Stone", "Castle", "Valley", "Forest", "Bridge", "Harbour", "Tower", "Island", "Lake"]
WORDS = ["the", "a", "city", "town", "people", "region", "built", "known", "large", "small", "river", "old", "famous",
         "north", "south", "of", "in", "and", "with", "near", "by", "its", "many", "first", "century"]


def wiki_document(r: random.Random) -> str:
    """``Title\\nSummary`` like the bundled Wikipedia summaries: the title opens the first sentence, and about
    half of the sentences hold a number."""
    title = f"{r.choice(ADJECTIVES)} {r.choice(NOUNS)}"
    sentences = [f"{title} is a {' '.join(r.choices(WORDS, k=r.randint(4, 10)))}."]
    for _ in range(r.randint(3, 5)):
        words = r.choices(WORDS, k=r.randint(6, 14))
        if r.random() < 0.5:
            words.insert(r.randrange(len(words)), str(r.randint(2, 1999)))
        sentences.append(" ".join(words).capitalize() + ".")
    return title + "\n" + " ".join(sentences)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A folder holding what ``bash scripts/demo.sh`` writes, at micro scale."""
    from biglm.data import train_tokenizer
    from biglm.data.builders import make_titles
    from biglm.evaluate import make_tasks

    root = tmp_path_factory.mktemp("demo")
    (root / "configs").symlink_to(ROOT / "configs")
    data = root / "data" / "demo"
    data.mkdir(parents=True)
    r = random.Random(0)
    (data / "wiki.jsonl").write_text("".join(json.dumps({"text": wiki_document(r)}) + "\n" for _ in range(800)))
    (data / "shakespeare.jsonl").write_text("".join(
        json.dumps({"text": " ".join(r.choices(WORDS, k=60)).capitalize() + "."}) + "\n" for _ in range(100)))
    train_tokenizer([data / "wiki.jsonl", data / "shakespeare.jsonl"], 400, data / "tokenizer")
    with contextlib.chdir(root):
        # as scripts/demo.sh, with configs/micro.yaml for configs/demo.yaml: 20% of the documents held out, so
        # that the builders below find enough of them
        assert main(["pretrain", "--config", "configs/micro.yaml", "--out", "runs/demo", "--train.steps", "10",
                     "--data.val_fraction", "0.2", "--train.progress", "false", "--train.tensorboard", "false"]) == 0
        assert make_tasks.main(["data/demo/wiki.jsonl", "--out", "runs/demo/tasks", "--prefix", "demo_wiki",
                                "--run", "runs/demo", "--max-items", "20"]) == 0
        assert make_titles.main(["data/demo/wiki.jsonl", "--run", "runs/demo", "--out", "runs/demo/titles"]) == 0
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The sizes each snippet runs with (its environment variables); PORT, where it serves, is a free one.
SIZES = {
    "quick_tour.sh": {"LIMIT": 8, "PORT": None},
    "finetune_csv.sh": {"N": 60, "EPOCHS": 1, "STEPS": 2},
    "instruction_chat.sh": {"STEPS": 2, "PORT": None},
    "align_preferences.sh": {"POLICY_STEPS": 30, "EPOCHS": 2, "STEPS": 4},
}


class Snippet:
    """A docs snippet running with bash in the background, in its own process group (so that a server it
    started goes with it whatever happens), its output in files."""

    def __init__(self, name: str, folder: Path, logs: Path, sizes: dict) -> None:
        self.name = name
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
               **{k: str(free_port() if v is None else v) for k, v in sizes.items()}}
        self.stdout, self.stderr = logs / f"{name}.out", logs / f"{name}.err"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(["bash", str(SNIPPETS / name)], cwd=folder, env=env, stdout=out,
                                            stderr=err, start_new_session=True)

    def output(self, timeout: float = 600) -> str:
        """Its standard output, once it has exited with status 0."""
        try:
            status = self.process.wait(timeout)
        finally:
            self.stop()
        assert status == 0, (f"{self.name} exited {status}:\n{self.stdout.read_text()[-3000:]}\n"
                             f"{self.stderr.read_text()[-5000:]}")
        return self.stdout.read_text()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def snippets(demo, request, tmp_path_factory) -> dict[str, Snippet]:
    """Every snippet whose test was selected, started at once: they are mostly the start-up of separate
    ``biglm`` processes, which two cores run side by side."""
    selected = {item.name for item in request.session.items}
    logs = tmp_path_factory.mktemp("logs")
    started = {name: Snippet(name, demo, logs, sizes) for name, sizes in SIZES.items()
               if f"test_{name.removesuffix('.sh')}" in selected}
    yield started
    for snippet in started.values():
        snippet.stop()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quick_tour(demo, snippets):
    out = snippets["quick_tour.sh"].output()
    tour = demo / "runs" / "tour"
    assert (tour / "micro" / "checkpoints").is_dir()
    assert "Assistant: " in out  # chat answered the piped line
    results = json.loads((tour / "eval" / "results_single-pass.json").read_text())
    assert "demo_wiki_continuation" in json.dumps(results)
    answers = jsonl(tour / "qa-answers.jsonl")
    assert answers and all("prediction" in a or "answer" in a for a in answers), answers[:2]
    assert (tour / "hf" / "config.json").is_file() and (tour / "wide" / "meta.json").is_file()
    completion = json.loads(out.strip().splitlines()[-1])  # what curl printed
    assert completion["object"] == "text_completion" and completion["choices"][0]["text"] is not None


def quick_tour_block(readme: str) -> str | None:
    """The text of the ```bash block right after the README's quick-tour marker line (None: no marker)."""
    if QUICK_TOUR_MARKER not in readme:
        return None
    block = re.match(r"\s*```bash\n(.*?)^```", readme.split(QUICK_TOUR_MARKER, 1)[1], re.S | re.M)
    assert block, f"README.md: no ```bash block right after {QUICK_TOUR_MARKER}"
    return block.group(1)


def test_readme_quick_tour_is_the_snippet():
    block = quick_tour_block((ROOT / "README.md").read_text())
    if block is None:
        pytest.skip(f"README.md has no {QUICK_TOUR_MARKER!r} line yet (the README's quick tour is added with it)")
    assert block == (SNIPPETS / "quick_tour.sh").read_text(), \
        "README.md's quick tour differs from docs/snippets/quick_tour.sh: copy the file into the block"


def test_quick_tour_block_is_read_after_the_marker():
    tour = "set -euo pipefail\nbiglm generate --ckpt runs/demo\n"
    readme = f"# biglm\n```bash\nbash scripts/demo.sh\n```\n{QUICK_TOUR_MARKER}\n```bash\n{tour}```\n```bash\nx\n```\n"
    assert quick_tour_block(readme) == tour
    assert quick_tour_block(readme.replace(QUICK_TOUR_MARKER, "")) is None
    with pytest.raises(AssertionError, match="no ```bash block"):
        quick_tour_block(f"{QUICK_TOUR_MARKER}\n```python\n{tour}```\n")


def test_finetune_csv(demo, snippets):
    out = snippets["finetune_csv.sh"].output()
    ft = demo / "runs" / "tutorial-finetune"
    assert (ft / "data" / "numbers_train.csv").read_text().startswith("sentence,has_number")
    scores = json.loads((ft / "numbers" / "eval" / "finetune_test.json").read_text())["scores"]
    assert 0 <= scores["accuracy"] <= 100
    predictions = jsonl(ft / "numbers_predictions.jsonl")
    assert predictions and {p["label"] for p in predictions} <= {"yes", "no"}, predictions[:2]
    scores = json.loads((ft / "titles" / "best" / "eval" / "finetune_test.json").read_text())["scores"]
    assert scores["examples"] == len(jsonl(ft / "data" / "titles_test.jsonl")) and "rougeL" in scores
    assert "sentence,has_number" in out


def test_instruction_chat(demo, snippets):
    out = snippets["instruction_chat.sh"].output()
    chat = demo / "runs" / "tutorial-chat"
    assert (chat / "chat" / "best").is_dir() and (chat / "chat" / "eval" / "finetune_test.json").is_file()
    assert out.count("Assistant: ") == 3 and "(conversation reset)" in out
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"


def test_align_preferences(demo, snippets):
    out = snippets["align_preferences.sh"].output()
    align = demo / "runs" / "tutorial-align"
    prefs = jsonl(align / "data" / "prefs-prompts.jsonl")
    assert len(prefs) == 256 and {p["choice"] for p in prefs} <= {"A", "B", "both_good", "both_bad"}
    assert (align / "rm" / "best").is_dir() and (align / "ppo" / "metrics.jsonl").is_file()
    assert (align / "dpo" / "metrics.jsonl").is_file()
    assert "ppo step 0: val_reward" in out and "ppo step 4: val_reward" in out and "dpo step 4: val_accuracy" in out
    assert out.count("=== [1] c b f ?") == 2  # both policies answered
