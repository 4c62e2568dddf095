"""biglm compare end to end on a tiny corpus: two recipes of different families trained on the same data and
budget, scored on the same held-out tasks, one table, JSON and plot; recipes that differ in data are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from biglm.cli import main
from biglm.compare import CompareOptions, load_recipes
from biglm.compare.core import train_all
from biglm.errors import BiglmError


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> tuple[Path, list[Path]]:
    from biglm.data import train_tokenizer
    from biglm.evaluate.make_tasks import synthetic_documents, write_jsonl

    root = tmp_path_factory.mktemp("compare")
    corpus = write_jsonl(root / "stories.jsonl", synthetic_documents(600, seed=1))
    train_tokenizer([corpus], 400, root / "tok")
    base = {"model": {"preset": "micro"},
            "data": {"tokenizer": str(root / "tok"), "sources": [{"path": str(corpus)}], "seq_len": 64,
                     "val_fraction": 0.1, "cache_dir": str(root / "cache"), "num_workers": 1},
            "train": {"steps": 6, "global_batch_size": 4, "warmup_steps": 1, "log_every": 2, "eval_every": 3,
                      "eval_batches": 1, "save_every": 6, "tensorboard": False, "peak_flops": 1e11,
                      "progress": False}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    paths = []
    for name in ("biglm", "causal"):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "objective": {"preset": name}}))
        paths.append(root / f"{name}.yaml")
    return root, paths


def test_compare_trains_scores_and_reports(recipes):
    root, paths = recipes
    out = root / "out"
    assert main(["compare", *map(str, paths), "--out", str(out), "--jobs", "0", "--threads", "1",
                 "--scoring", "single-pass", "--max-items", "12", "--limit", "4"]) == 0
    table = (out / "compare.md").read_text()
    assert "| biglm | masked | 6 |" in table and "| causal | causal | 6 |" in table and "| single-pass |" in table
    data = json.loads((out / "compare.json").read_text())
    rows = {r["recipe"]: r for r in data["rows"]}
    assert rows["biglm"]["masked_val_loss"] > 0 and "masked_val_loss" not in rows["causal"]
    for r in rows.values():
        assert r["train"]["steps"] == 6 and r["train"]["flops"] > 0
        assert 0 <= r["results"]["compare_continuation"]["acc,none"] <= 1
        assert r["results"]["compare_perplexity"]["bits_per_byte,none"] > 0
    assert (out / "compare.png").stat().st_size > 10_000
    # A second call reuses the finished runs (and the cached scores).
    said = []
    train_all(load_recipes(list(map(str, paths)), []), CompareOptions(out=out), said.append)
    assert all("finished run found" in s for s in said) and len(said) == 2
    # Tasks and scores made under other settings are made again, not reused from the cache.
    assert main(["compare", *map(str, paths), "--out", str(out), "--jobs", "0", "--threads", "1",
                 "--scoring", "single-pass", "--max-items", "10", "--limit", "2"]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert {(r["settings"]["limit"], r["settings"]["max_items"]) for r in rows} == {(2, 10)}
    assert json.loads((out / "tasks" / "settings.json").read_text())["max_items"] == 10


def test_recipes_must_share_data_and_budget(recipes):
    _, paths = recipes
    with pytest.raises(BiglmError, match="recipe names"):
        load_recipes([str(paths[0]), str(paths[0])], [])
    odd = paths[1].with_name("odd.yaml")
    odd.write_text(yaml.safe_dump({"base": "base.yaml", "objective": {"preset": "causal"},
                                   "data": {"seq_len": 32}}))
    with pytest.raises(BiglmError, match=r"differs from biglm in data"):
        load_recipes([str(paths[0]), str(odd)], [])
    fewer = paths[1].with_name("fewer.yaml")  # another step count is allowed: the table shows each row's budget
    fewer.write_text(yaml.safe_dump({"base": "base.yaml", "objective": {"preset": "causal"}, "train": {"steps": 4}}))
    assert [r.cfg.train.steps for r in load_recipes([str(paths[0]), str(fewer)], [])] == [6, 4]


def test_a_changed_recipe_is_not_reported_from_the_old_run(recipes, tmp_path):
    """A finished run trained with lr 3e-3 is not reused for a recipe that now says 1e-2 (it used to be:
    "finished run found", old numbers reported): one line naming the field, before anything is trained."""
    root, _ = recipes
    out = tmp_path / "out"
    recipe = tmp_path / "biglm.yaml"
    recipe.write_text(yaml.safe_dump({"base": str(root / "base.yaml"), "objective": {"preset": "biglm"},
                                      "train": {"lr": 3e-3, "steps": 2, "save_every": 2}}))
    train_all(load_recipes([str(recipe)], []), CompareOptions(out=out, jobs=0), lambda _: None)
    said = []  # the same recipe, only bookkeeping changed: reused
    train_all(load_recipes([str(recipe)], ["--train.log_every", "1", "--train.progress", "true"]),
              CompareOptions(out=out, jobs=0), said.append)
    assert said == [f"compare: biglm: finished run found in {out / 'biglm'}"]
    recipe.write_text(recipe.read_text().replace("0.003", "0.01"))
    metrics = (out / "biglm" / "metrics.jsonl").read_text()
    with pytest.raises(BiglmError, match=r"biglm was trained with another config than .*biglm.yaml "
                                         r"\(train.lr 0.003 -> 0.01\); give another --out"):
        train_all(load_recipes([str(recipe)], []), CompareOptions(out=out, jobs=0), said.append)
    assert len(said) == 1 and (out / "biglm" / "metrics.jsonl").read_text() == metrics  # nothing trained
    assert main(["compare", str(recipe), "--out", str(out), "--jobs", "0", "--train-only"]) == 2
