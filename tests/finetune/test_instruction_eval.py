"""Evaluating instruction-tuned models: Genset-style generation scoring (BLEU-2, Distinct) with predictions
written, the Genset builders' record conversion, and the offline MMLU-style lm-eval task (few-shot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biglm.cli import main
from biglm.data.builders.genset import GENSET_SOURCES
from biglm.finetune import load_finetune_config, setup_finetune
from biglm.metrics import bleu2, distinct
from test_instruction import checkpoint, write_jsonl


def test_distinct_and_bleu2():
    assert distinct(["a b a b", "a c"]) == {"distinct1": pytest.approx(100 * 3 / 6),
                                            "distinct2": pytest.approx(100 * 3 / 4)}  # ab ba ab | ac
    import sacrebleu

    preds, refs = ["the cat sat on a mat", "a dog"], ["the cat sat on the mat", "a big dog"]
    expected = sacrebleu.metrics.BLEU(max_ngram_order=2).corpus_score(preds, [refs]).score
    assert bleu2(preds, refs)["bleu2"] == pytest.approx(expected)
    assert bleu2(preds, refs)["bleu2"] > sacrebleu.corpus_bleu(preds, [refs]).score  # 4-grams are rarer


def test_genset_record_conversion():
    qqp = GENSET_SOURCES["qqp"][3]
    assert qqp({"question1": "How old?", "question2": "What age?", "label": 1})["output"] == "What age?"
    assert qqp({"question1": "a", "question2": "b", "label": 0}) is None  # not a paraphrase
    chat = GENSET_SOURCES["personachat"][3]({"personality": ["i like tea ."], "history": ["hi", "hello"],
                                              "candidates": ["wrong", "right"]})
    assert chat == {"instruction": "Continue the dialogue as this person: i like tea .", "input": "hi\nhello",
                    "output": "right"}
    wiki = GENSET_SOURCES["wiki_auto"][3]({"source": "A long one.", "target": "Short."})
    assert wiki["instruction"] == "Simplify this sentence." and wiki["output"] == "Short."


def test_evaluate_generation_writes_predictions_and_scores_per_set(tmp_path, capsys):
    init = checkpoint(tmp_path / "init")
    records = [{"id": f"r{i}", "task": ("reverse", "upper")[i % 2], "instruction": "reverse this",
                "input": "a b c", "output": "c b a"} for i in range(6)]
    data = write_jsonl(tmp_path / "genset.jsonl", records)
    cfg = load_finetune_config(None, ["--init", str(init), "--task.kind", "instruction", "--data.train", data,
                                      "--task.instruction.max_target_length", "6", "--train.steps", "2",
                                      "--train.progress", "false", "--train.tensorboard", "false"])
    trainer = setup_finetune(cfg, tmp_path / "run")
    trainer.fit()
    trainer.close()
    assert main(["evaluate", "--ckpt", str(tmp_path / "run"), "--generation", data, "--out",
                 str(tmp_path / "eval")]) == 0
    scores = json.loads((tmp_path / "eval" / "genset_scores.json").read_text())
    assert set(scores) == {"reverse", "upper", "all"} and scores["all"]["examples"] == 6
    assert {"bleu2", "distinct1", "distinct2"} <= set(scores["reverse"])
    rows = [json.loads(line) for line in (tmp_path / "eval" / "genset_predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)] and rows[0]["reference"] == "c b a"
    assert "| reverse | 3 |" in capsys.readouterr().out
    # biglm predict answers conversations that end with a user turn, and FLAN records without an output.
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"id": "q1", "messages": [{"role": "user", "content": "caps this a b"}]},
        {"id": "q2", "instruction": "reverse this", "input": "a b c"}])
    assert main(["predict", "--ckpt", str(tmp_path / "run"), "--input", queries, "--out",
                 str(tmp_path / "pred.jsonl")]) == 0
    answers = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == ["q1", "q2"] and all(isinstance(a["prediction"], str) for a in answers)
    # The exported transformers folder carries the chat template: transformers' chat tooling renders the
    # prompt the model was tuned on.
    assert main(["export-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    chat = [{"role": "user", "content": "reverse this\n\na b c"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        "[BOS]User: reverse this\n\na b c\nAssistant:"


def test_offline_mmlu_style_task_runs_few_shot(tmp_path):
    pytest.importorskip("lm_eval")
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["evaluate", "--ckpt", str(ckpt), "--tasks", "biglm_mmlu_local", "--num-fewshot", "2",
                 "--scoring", "single-pass", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "results_single-pass.json").read_text())
    assert result["n-samples"]["biglm_mmlu_local"]["effective"] == 24
    assert result["n-shot"]["biglm_mmlu_local"] == 2
    assert 0.0 <= result["results"]["biglm_mmlu_local"]["acc,none"] <= 1.0
    assert Path(tmp_path / "eval" / "results_single-pass.md").is_file()
