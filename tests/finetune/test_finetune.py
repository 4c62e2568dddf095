"""Fine-tuning mechanics: records, configs, task encodings, the epoch stream, metrics against reference
values, bad input (one line each, nothing written before lost) and the CLI (random micro models; fast)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from biglm.cli import main
from biglm.data.records import read_records
from biglm.errors import BiglmError, ConfigError
from biglm.finetune import ExampleStream, build_task, load_finetune_config
from biglm.finetune.tasks.cloze import parse_template
from biglm.metrics import bleu, exact_match, rouge, squad_normalize, squad_scores
from conftest import make_checkpoint, word_tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(*overrides: str):
    return load_finetune_config(None, list(overrides))


# --- records -----------------------------------------------------------------------------------------------

def test_record_formats(tmp_path):
    rows = [{"source": "a b", "target": "b a", "n": 1}, {"source": "c", "target": "c", "n": 2}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    (tmp_path / "x.json").write_text(json.dumps({"version": "1", "data": rows}))
    (tmp_path / "x.csv").write_text("source,target,n\na b,b a,1\nc,c,2\n")
    (tmp_path / "x.tsv").write_text("source\ttarget\tn\na b\tb a\t1\nc\tc\t2\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    (tmp_path / "x.src").write_text("a b\nc\n")
    (tmp_path / "x.tgt").write_text("b a\nc\n")
    for suffix in ("jsonl", "json", "csv", "tsv", "parquet", "src"):
        records = read_records(str(tmp_path / f"x.{suffix}"))
        assert [r.get("source") for r in records] == ["a b", "c"], suffix
        assert [r.get("target") for r in records] == ["b a", "c"], suffix
    assert read_records(str(tmp_path / "x.csv"))[1].where == f"{tmp_path / 'x.csv'}:3"  # header is line 1
    assert len(read_records(str(tmp_path / "x.jsonl"), limit=1)) == 1


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"source": "a"}\n{"source": \n', "bad.jsonl", "bad.jsonl:2: not valid JSON"),
    ('["a"]\n', "list.jsonl", "list.jsonl:1: expected a JSON object"),
    ("", "empty.jsonl", "empty.jsonl: no examples (empty split)"),
    ("a,b\n1,2,3\n", "cells.csv", "cells.csv:2: 3 cells, the header has 2"),
    ("x", "data.xml", "unsupported file type"),
])
def test_record_errors_name_the_line(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(BiglmError, match=re.escape(message)):
        read_records(str(tmp_path / name))
    with pytest.raises(BiglmError, match=r"missing\.jsonl: file not found"):
        read_records(str(tmp_path / "missing.jsonl"))


# --- metrics against reference values -----------------------------------------------------------------------

def test_rouge_bleu_and_squad_reference_values():
    # ROUGE-1 by hand: 3 of the reference's 6 unigrams, all 3 predicted ones match: P=1, R=0.5, F=2/3.
    assert rouge(["the cat sat"], ["the cat sat on the mat"])["rouge1"] == pytest.approx(200 / 3)
    # Stemming: "running" and "runs" both stem to "run".
    assert rouge(["he runs"], ["he running"])["rouge1"] == pytest.approx(100.0)
    # BLEU-4 by hand: precisions 8/8, 6/7, 5/6, 4/5, brevity penalty exp(1 - 9/8).
    got = bleu(["the quick brown fox jumps over the dog"], ["the quick brown fox jumps over the lazy dog"])
    want = 100 * math.exp(1 - 9 / 8) * (1 * 6 / 7 * 5 / 6 * 4 / 5) ** 0.25
    assert got["bleu"] == pytest.approx(want, abs=0.01)
    assert got["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert bleu(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100.0)
    # SQuAD v1.1 normalisation: case, punctuation, articles a/an/the, whitespace.
    assert squad_normalize("  The  Cat,  an Apple!  ") == "cat apple"
    assert squad_normalize("A-Team") == "ateam" and squad_normalize("the theory") == "theory"
    scores = squad_scores(["the big cat", "Paris", "nothing"], [["a cat"], ["Paris, France", "paris"], ["x"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)  # only "Paris" matches (its second answer)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)  # "big cat" vs "cat": P=1/2, R=1
    assert exact_match([" a b "], ["a b"])["exact_match"] == 100.0


def test_meteor_says_when_it_cannot_be_computed(monkeypatch):
    from biglm import metrics

    monkeypatch.setattr(metrics, "wordnet_available", lambda: False)
    out = metrics.meteor(["a b"], ["a b"])
    assert out["meteor"] is None and "WordNet" in out["meteor_note"]


# --- configs and templates ----------------------------------------------------------------------------------

def test_config_resolution_and_errors(tmp_path):
    cfg = cfg_for("--task.kind", "seq2seq", "--train.epochs", "5", "--task.seq2seq.label_smoothing", "0.1",
                  "--model.dropout", "0.1")
    assert cfg.train.epochs == 5 and cfg.task.options.label_smoothing == 0.1 and cfg.model_overrides == {"dropout": 0.1}
    assert cfg.train.schedule == "linear" and cfg.train.steps == 0  # steps come from the epochs
    with pytest.raises(ConfigError, match=re.escape("task.kind='qa': expected one of")):
        cfg_for("--task.kind", "qa")
    typo = "--task.seq2seq.smoothing: unknown config key 'task.seq2seq.smoothing'; did you mean "
    with pytest.raises(ConfigError, match=re.escape(typo + "'task.seq2seq.label_smoothing'")):
        cfg_for("--task.seq2seq.smoothing", "0.1")
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'data.source'; did you mean")):
        cfg_for("--data.source", "x")
    with pytest.raises(ConfigError, match=re.escape("task.seq2seq.metrics: unknown metric 'rouge3'")):
        cfg_for("--task.seq2seq.metrics", "[rouge3]")
    shipped = sorted((Path(__file__).resolve().parents[2] / "configs" / "finetune").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"mnli", "squad", "xsum", "msqg"}
    for path in shipped:  # every shipped fine-tuning config parses, and its saved form round-trips
        cfg = load_finetune_config(path)
        again = type(cfg).from_dict(cfg.to_dict())
        assert (again.task, again.data, again.train) == (cfg.task, cfg.data, cfg.train), path


@pytest.mark.parametrize(("template", "message"), [
    ("{text} is it?", "needs exactly one {blank} (found 0)"),
    ("{blank} {text} {blank}", "needs exactly one {blank} (found 2)"),
    ("{text} {} {blank}", "empty {} field"),
    ("{text {blank}", "not a valid template"),
])
def test_template_errors(template, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_template(template)


def test_cloze_encoding_moves_whitespace_into_the_verbalizer_and_keeps_text_after_the_blank():
    cfg = cfg_for("--task.kind", "cloze-classification", "--task.cloze_classification.template",
                  '"{text} ? {blank} @ {text}"',
                  "--task.cloze_classification.verbalizer", '{"p": "yes", "q": "no way"}')
    task = build_task(cfg, word_tokenizer(), 64)
    from biglm.data.records import Record

    (ex,) = task.encode([Record({"text": "a b", "label": "q"}, "x:1")])
    tok = word_tokenizer()
    assert ex.before == [tok.bos_token_id, *tok("a b ?", add_special_tokens=False)["input_ids"]]
    assert ex.after == tok("@ a b", add_special_tokens=False)["input_ids"]
    yes, no_way = tok(["yes", "no way"], add_special_tokens=False)["input_ids"]
    assert ex.verbalizers == [[*yes, tok.eos_token_id], no_way] and ex.label == 1  # equal blanks (EOS-padded)
    batch = task.batcher()([ex], None)
    n = len(ex.before)
    assert batch.input_ids[0, n:n + 2].tolist() == [tok.mask_token_id] * 2
    assert batch.labels[0, n:n + 2].tolist() == ex.verbalizers[1]
    assert batch.layout.regions[0].tolist() == [0] * n + [1, 1] + [0] * len(ex.after)
    assert batch.num_targets == 2


def test_the_blank_never_tells_the_label():
    """Verbalizers of different token counts ("yes" one token, "no way" two) used to make blanks of different
    widths, so a training row's input showed its label: a model fitted that and stayed at chance on new text.
    Now every label's row has the same input; only the targets differ."""
    cfg = cfg_for("--task.kind", "cloze-classification", "--task.cloze_classification.template", '"{text} {blank}"',
                  "--task.cloze_classification.verbalizer", '{"p": "yes", "q": "no way"}')
    task = build_task(cfg, word_tokenizer(), 64)
    from biglm.data.records import Record

    rows = task.encode([Record({"text": "a b", "label": label}, f"x:{i}") for i, label in enumerate("pq")])
    batch = task.batcher()(rows, None)
    assert torch.equal(batch.input_ids[0], batch.input_ids[1])
    assert not torch.equal(batch.labels[0], batch.labels[1])
    assert batch.loss_mask[0].sum() == batch.loss_mask[1].sum() == 2


# --- the epoch stream ------------------------------------------------------------------------------------

def test_example_stream_epochs_shuffle_resume_and_ranks():
    items = list(range(10))
    one = ExampleStream(items, rows_per_epoch=12, seed=3)  # 3 steps of 4 rows: the last tops up from the start
    rows = [x for batch, _ in zip(one.batches(4), range(6)) for x in batch]
    first, second = rows[:12], rows[12:]
    assert sorted(first[:10]) == items and first[10:] == first[:2]  # every example once, then the wrap-around
    assert sorted(second[:10]) == items and second != first  # a new permutation each epoch
    # Resume: a fresh stream put back at the saved position continues identically.
    s = ExampleStream(items, rows_per_epoch=12, seed=3)
    it = s.batches(4)
    next(it), next(it)
    state = s.state_dict()
    resumed = ExampleStream(items, rows_per_epoch=12, seed=3)
    resumed.load_state_dict(state)
    assert next(resumed.batches(4)) == rows[8:12]
    # Two ranks deal the same global rows round-robin.
    r0, r1 = (ExampleStream(items, rows_per_epoch=12, seed=3, rank=r, world_size=2) for r in (0, 1))
    merged = [x for a, b in zip(next(r0.batches(2)), next(r1.batches(2))) for x in (a, b)]
    assert merged == rows[:4]


# --- bad input through the command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("init") / "ckpt")


def finetune(*args: str) -> int:
    # A 64-token model: targets of at most 16 tokens leave room for the sources.
    short = [] if any("max_target_length" in a or a == "--eval-only" for a in args) \
        else ["--task.seq2seq.max_target_length", "16"]
    return main(["finetune", *args, *short, "--train.progress", "false", "--train.tensorboard", "false"])


def test_bad_input_is_one_line_and_loses_nothing(init, tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [{"source": "a b", "target": "b a"}] * 8)
    nofield = write_jsonl(tmp_path / "nofield.jsonl", [{"source": "a", "target": "a"}, {"source": "b", "summary": "b"}])
    long_target = write_jsonl(tmp_path / "long.jsonl", [{"source": "a", "target": " ".join("a" * 20)}])
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"text": "a", "label": "p"}, {"text": "b", "label": "z"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    run = tmp_path / "run"
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(good), "--out", str(run),
                    "--epochs", "1", "--train.global_batch_size", "4") == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    cases = [
        (["--task", "seq2seq", "--train", str(nofield)],
         f"{nofield}:2: missing field 'target' (fields: source, summary)"),
        (["--task", "seq2seq", "--train", str(empty)], f"{empty}: no examples (empty split)"),
        (["--task", "seq2seq", "--train", str(long_target), "--task.seq2seq.max_target_length", "8"],
         f"{long_target}:1: target of 20 tokens exceeds task.seq2seq.max_target_length=8"),
        (["--task", "cloze-classification", "--train", str(labels), "--verbalizer", "p=yes", "--verbalizer", "q=no"],
         f"{labels}:2: label 'z' is not in the verbalizer (labels: p, q)"),
        (["--task", "cloze-classification", "--train", str(labels), "--verbalizer", "p=yes", "--template", "{text}"],
         "needs exactly one {blank} (found 0)"),
        (["--task", "cloze-classification", "--train", str(labels), "--verbalizer", "p"], "expected LABEL=WORDS"),
        (["--task", "seq2seq", "--train", str(tmp_path / "nope.jsonl")], "nope.jsonl: file not found"),
        (["--task", "seq2seq", "--train", str(good), "--init", str(tmp_path / "nothing")], "no such checkpoint"),
    ]
    for args, message in cases:
        capsys.readouterr()
        argv = ["--init", str(init), "--out", str(tmp_path / "other"), *args]
        assert finetune(*argv) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    # The same mistakes against the existing run folder: refused, and nothing in it changed.
    capsys.readouterr()
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(nofield), "--out", str(run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert finetune("--resume", "--out", str(run), "--train", str(nofield)) == 2
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts} == before
    # A too-long target is cut (and counted) when asked.
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(long_target), "--out",
                    str(tmp_path / "cut"), "--task.seq2seq.max_target_length", "8", "--task.seq2seq.truncate_targets",
                    "true", "--epochs", "1", "--train.global_batch_size", "1") == 0
    assert "first 8 of 1 target(s)" in capsys.readouterr().err


def test_cli_finetune_predict_and_eval_only(init, tmp_path, capsys):
    rows = [{"id": f"e{i}", "source": "a b c", "target": "c b a"} for i in range(6)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[:3])
    run = tmp_path / "run"
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(train), "--valid", str(valid),
                    "--test", str(valid), "--out", str(run), "--epochs", "2", "--train.global_batch_size", "2",
                    "--task.seq2seq.max_target_length", "6") == 0
    out = capsys.readouterr().out
    assert "best val_rougeL" in out and (run / "best" / "meta.json").is_file()
    rows_logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_logged if "val_rougeL" in r] == [1.0, 2.0]  # validated after every epoch
    assert all("val_length_accuracy" in r for r in rows_logged if "val_rougeL" in r)
    assert main(["plot", str(run)]) == 0  # the plot gains a panel of the validation task metrics
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    test = json.loads((run / "eval" / "finetune_test.json").read_text())
    assert test["split"] == "test" and test["checkpoint"].endswith("best") and "rouge1" in test["scores"]
    # predict: one JSON object per input line, targets not needed
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "source": "a b"}, {"id": "y", "source": "c"}])
    assert main(["predict", "--ckpt", str(run), "--input", str(inputs), "--out", str(tmp_path / "p.jsonl")]) == 0
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["x", "y"] and all(isinstance(p["prediction"], str) for p in preds)
    # eval-only scores the same checkpoint the same way
    assert finetune("--eval-only", "--ckpt", str(run), "--split", "test", "--out", str(tmp_path / "ev")) == 0
    again = json.loads((tmp_path / "ev" / "finetune_test.json").read_text())
    assert again["scores"]["rougeL"] == pytest.approx(test["scores"]["rougeL"])
    # predict refuses a pretrained (not fine-tuned) checkpoint with one line
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(init), "--input", str(inputs), "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "not a fine-tuned checkpoint" in capsys.readouterr().err


def test_zero_shot_cloze_eval(init, tmp_path, capsys):
    rows = [{"text": "a b", "label": "p"}, {"text": "c d", "label": "q"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert finetune("--eval-only", "--init", str(init), "--task", "cloze-classification", "--valid", str(data),
                    "--verbalizer", "p=yes", "--verbalizer", "q=no way", "--out", str(tmp_path / "ev"),
                    "--show", "2") == 0
    shown = capsys.readouterr().out
    assert "a b ___" in shown and "[gold: p]" in shown and "[gold: q]" in shown
    result = json.loads((tmp_path / "ev" / "finetune_valid.json").read_text())
    assert result["scores"]["examples"] == 2 and "accuracy" in result["scores"]
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions_valid.jsonl").read_text().splitlines()]
    for p in preds:  # GLM eq. 5: a distribution over the label set
        assert sum(p["probs"].values()) == pytest.approx(1.0) and p["label"] in ("p", "q")


def test_prediction_is_the_same_with_and_without_the_prefix_cache(init, tmp_path):
    from biglm.checkpoint import load_model
    from biglm.data.records import Record
    from biglm.generate.engine import generate_ids

    cfg = cfg_for("--task.kind", "seq2seq", "--task.seq2seq.max_target_length", "6")
    loaded = load_model(init)
    task = build_task(cfg, loaded.tokenizer, 64)
    examples = task.encode([Record({"source": s, "target": "a"}, f"x:{i}") for i, s in enumerate(["a b", "c d e f"])])
    ids = task.ids
    common = dict(bos_token_id=ids.bos, eos_token_id=ids.eos, mask_token_id=ids.mask, pad_token_id=ids.pad,
                  max_new_tokens=6, steps=4)
    torch.manual_seed(0)
    cached = generate_ids(loaded.model, [e.source for e in examples], prefix_cache=True, **common)
    plain = generate_ids(loaded.model, [e.source for e in examples], prefix_cache=False, **common)
    assert cached.full_token_ids == plain.full_token_ids
    assert cached.scores == pytest.approx(plain.scores, abs=1e-5)


def test_extractive_qa_model_exports_to_transformers(init, tmp_path, capsys):
    from transformers import AutoModelForQuestionAnswering

    from biglm.checkpoint import load_model
    from biglm.hf.convert import export_hf

    ctx = "a b c d e f g h"
    rows = [{"id": "1", "question": "c", "context": ctx, "answers": {"text": ["c d"], "answer_start": [4]}}] * 4
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    run = tmp_path / "run"
    assert finetune("--task", "extractive-qa", "--init", str(init), "--train", str(data), "--out", str(run),
                    "--epochs", "1", "--train.global_batch_size", "2", "--task.extractive_qa.max_length", "32",
                    "--task.extractive_qa.doc_stride", "4") == 0
    assert finetune("--eval-only", "--ckpt", str(run), "--valid", str(data), "--show", "1") == 0
    assert "[gold: c d]" in capsys.readouterr().out
    out = export_hf(run, tmp_path / "hf")
    hf = AutoModelForQuestionAnswering.from_pretrained(out, trust_remote_code=True).eval()
    ours = load_model(run).model
    ids = torch.tensor([[1, 10, 2, 8, 9, 10, 11, 12, 2]])
    with torch.no_grad():
        span = ours(ids, logits_mask=torch.zeros_like(ids, dtype=torch.bool)).span_logits
        got = hf(input_ids=ids)
    torch.testing.assert_close(got.start_logits, span[..., 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.end_logits, span[..., 1], atol=1e-5, rtol=1e-5)


def test_make_titles_uses_the_runs_held_out_documents(tmp_path, capsys):
    from biglm.data.builders.make_titles import main as make_titles
    from biglm.data.held_out import split_documents

    docs = [f"Title {i}\nTitle {i} is a thing number {i} of the list. It has more text." for i in range(60)]
    docs[5] = "Short\nToo short."  # fewer than 4 words in its first sentence: skipped
    wiki = write_jsonl(tmp_path / "wiki.jsonl", [{"text": d} for d in docs])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  val_fraction: 0.3\n  val_seed: 4\n")
    assert make_titles([str(wiki), "--run", str(run), "--out", str(tmp_path / "t"), "--valid", "5"]) == 0
    read = lambda name: [json.loads(x) for x in (tmp_path / "t" / f"{name}.jsonl").read_text().splitlines()]
    train, valid, test = read("train"), read("valid"), read("test")
    trained, held = split_documents([str(wiki)], 0.3, 4)
    assert {r["target"] for r in train} == {d.split("\n")[0] for d in trained} - {"Short"}
    assert {r["target"] for r in valid + test} == {d.split("\n")[0] for d in held} - {"Short"}
    assert len(valid) == 5 and train[0]["source"].endswith("of the list.")
    baseline = json.loads((tmp_path / "t" / "baseline.json").read_text())
    assert baseline["k"] == 2 and baseline["exact_match"] == 100.0  # "Title N" is the first two words
    capsys.readouterr()
    assert make_titles([str(wiki), "--run", str(tmp_path), "--out", str(tmp_path / "u")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_resume_with_more_epochs_extends_the_run(init, tmp_path, capsys):
    """``--resume --epochs 2`` after one epoch trains the second (it used to say "no new steps" and record
    ``epochs: 2``); fewer epochs than done, or a changed field with no step left, are refused and nothing
    is recorded; the same config again is a no-op."""
    import yaml

    train = write_jsonl(tmp_path / "train.jsonl", [{"source": "a b", "target": "b a"}] * 8)
    run = tmp_path / "run"
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(train), "--out", str(run),
                    "--epochs", "1", "--train.global_batch_size", "4") == 0  # 2 steps
    capsys.readouterr()
    assert finetune("--resume", "--out", str(run), "--epochs", "2") == 0
    out, err = capsys.readouterr()
    assert "done: step 4, loss" in out
    assert "note: train.epochs 1 -> 2: the run goes on to step 4 (was 2); the linear schedule now spans 4 steps" in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["train"]["epochs"], saved["train"]["steps"]) == (2, 4)
    assert (run / "checkpoints" / "step_00000004").is_dir()
    before = (run / "config.yaml").read_text()
    for args, message in [(["--epochs", "1"], "train.epochs 2 -> 1"), (["--train.lr", "0.001"], "train.lr")]:
        assert finetune("--resume", "--out", str(run), *args) == 2
        err = capsys.readouterr().err.strip().splitlines()  # the set-up line, then the refusal
        assert "error: " in err[-1] and "no step left (step 4 of" in err[-1] and message in err[-1], err
        assert not any("Traceback" in line for line in err)
        assert (run / "config.yaml").read_text() == before
    assert finetune("--resume", "--out", str(run)) == 0
    assert "done: step 4, no new steps" in capsys.readouterr().out


def test_a_task_the_family_cannot_do_is_refused_in_one_line(tmp_path, capsys):
    """A causal checkpoint given to cloze-classification used to train silently as if masked."""
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"text": "a b", "label": "p"}, {"text": "b a", "label": "q"}])
    want = ("task.kind=cloze-classification: needs a masked or glm model, the checkpoint is {0} (a {0} model "
            "fine-tunes with: extractive-qa, seq2seq, instruction, reward, dpo)")
    for family in ("causal", "bidirectional-ar"):
        ckpt = make_checkpoint(tmp_path / family, family=family)
        cloze = ["--task", "cloze-classification", "--init", str(ckpt), "--verbalizer", "p=a", "--verbalizer", "q=b",
                 "--template", "{text} {blank}"]
        for args in (["--train", str(labels), "--out", str(tmp_path / f"run-{family}")],  # fine-tuning
                     ["--eval-only", "--valid", str(labels)]):  # zero-shot scoring
            capsys.readouterr()
            assert finetune(*cloze, *args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and want.format(family) in err[0], err
        assert not (tmp_path / f"run-{family}").exists()


def test_a_pretrained_checkpoint_gets_advice_each_verb_can_follow(init, tmp_path, capsys):
    """predict, reward and evaluate --generation have no --task: their refusal used to say "give the task
    (--task ...)"; each now names what its user can do."""
    data = write_jsonl(tmp_path / "in.jsonl", [{"source": "a", "prompt": "a", "response": "b"}])
    cases = [(["predict", "--ckpt", str(init), "--input", str(data), "--out", str(tmp_path / "p.jsonl")],
              "fine-tune it first (biglm finetune --task KIND --init CKPT ...)"),
             (["reward", "--ckpt", str(init), "--input", str(data)],
              "fine-tune a reward model from it first (biglm finetune --task reward ...)"),
             (["evaluate", "--ckpt", str(init), "--generation", str(data), "--out", str(tmp_path / "ev")],
              "--generation needs an instruction or seq2seq fine-tune (biglm finetune --task instruction ...); "
              "score a pretrained model with --tasks")]
    for argv, advice in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"not a fine-tuned checkpoint (no task in its config.yaml); {advice}" in err[0], err
        assert "give the task" not in err[0]
