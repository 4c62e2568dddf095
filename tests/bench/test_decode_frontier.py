"""``bench/decode_frontier.py --quick`` end to end on toy models: a corpus of the test asset's sentences, micro-size
masked, causal and copy models trained for a few steps, every quick setting measured and timed at the trained
shape and at a second shape (random weights, the trained model's pass counts), the JSON's ``best`` list, the
limit analysis and the plot; a rerun reuses the trained models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "tests" / "assets" / "wiki_sentences.jsonl"


def toy_corpus(folder: Path) -> Path:
    """200 'articles' of five asset sentences each, with a title line, as the bundled corpus has them."""
    texts = [json.loads(line)["text"] for line in ASSET.read_text(encoding="utf-8").splitlines()]
    folder.mkdir(parents=True)
    docs = [{"text": f"Article {i}\n" + " ".join(texts[i * 5:(i + 1) * 5])} for i in range(len(texts) // 5)]
    (folder / "wiki.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder


def run_frontier(tmp_path: Path) -> tuple[dict, str]:
    config = tmp_path / "toy.yaml"
    config.write_text(f"base: {ROOT / 'configs' / 'micro.yaml'}\ndata:\n  val_fraction: 0.1\n")
    out = tmp_path / "frontier.json"
    args = ["--quick", "--threads", "1", "--data", str(tmp_path / "data"), "--config", str(config),
            "--runs", str(tmp_path / "runs"), "--masked", str(tmp_path / "none"), "--causal", str(tmp_path / "none"),
            "--pretrain-steps", "3", "--copy-steps", "3", "--copy-sizes", "60", "10", "10", "--init-preset", "micro",
            "--shapes", "micro,tiny", "--prompts", "2", "--prompt-tokens", "8", "--new", "8", "--copy-batch1", "2",
            "--repeats", "1", "--out", str(out), "--plot", str(tmp_path / "frontier.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "decode_frontier.py"), *args], capture_output=True,
                         text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_quick_frontier_on_toy_models(tmp_path):
    toy_corpus(tmp_path / "data")
    report, stdout = run_frontier(tmp_path)
    assert all(report["models"][m]["trained_now"] for m in ("masked", "causal", "seq2seq"))
    assert report["models"]["masked"]["objective"] == "biglm" and report["models"]["causal"]["objective"] == "causal"
    quality = {q["name"]: q for q in report["quality"]}
    ref = quality[report["reference"]]
    assert ref["quality_delta"] == {"exact_match_points": 0.0, "gen_ppl_relative": 0.0, "repetition_4": 0.0}
    assert ref["within_tolerance"] and ref["continuation"]["passes_all"] == 1 + report["new_tokens"]
    for q in quality.values():
        assert "unsupported" not in q, q
        assert q["continuation"]["tokens"] == report["prompts"] * report["new_tokens"]  # EOS banned: all tokens
        assert q["continuation"]["gen_ppl"] > 0 and 0 <= q["continuation"]["repetition_4"] <= 1
    shapes = {(t["shape"], t["batch"]) for t in report["timing"]}
    assert shapes == {("micro", 1), ("tiny", 1)}
    for t in report["timing"]:
        assert t["tok_s"] > 0 and t["passes"] >= 1
    assert {(t["shape"], t["batch"]) for t in report["copy_timing"]} == shapes
    for t in report["copy_timing"]:
        assert t["tok_s"] > 0 and t["passes_per_example"] >= 1 and t["task"] == "copy"
    best = {(b["task"], b["shape"], b["batch"]): b for b in report["best"]}
    assert {(s, b) for task, s, b in best if task == "continuation"} == shapes
    assert {(s, b) for task, s, b in best if task == "copy"} == shapes
    assert set(report["goal"]) == {"continuation", "copy"}
    for b in best.values():
        assert {"shape", "batch", "setting", "speedup_vs_generate", "quality_delta"} <= set(b)
        assert b["speedup_vs_generate"] > 0 and "strategy=" in b["setting"]
    assert report["limit_analysis"]["shape"] == "tiny" and len(report["limit_analysis"]["passes"]) == 5
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "| setting |" in stdout and "Best within tolerance" in stdout
    again, _ = run_frontier(tmp_path)  # the models are reused, not trained again
    assert not any(again["models"][m]["trained_now"] for m in ("masked", "causal", "seq2seq"))
