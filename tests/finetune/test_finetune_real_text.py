"""Fine-tuning on real text (sentences of the bundled Wikipedia summaries, ``tests/assets``), with a byte-level
BPE tokenizer trained on them, so that words are several tokens each: the seq2seq kind copies real words, and
a cloze on a surface feature of real sentences generalises to sentences it never saw. Also the mechanics
behind them: copying is copying tokens, aligned targets sit where the engine decodes them, and the blank of a
cloze never tells its label.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.data.builders.make_wordtasks import vocabulary, word_sequences
from biglm.data.records import Record
from biglm.finetune import build_task, evaluate_split, load_finetune_config, load_predictor, setup_finetune

ASSET = Path(__file__).parents[1] / "assets" / "wiki_sentences.jsonl"


def sentences() -> list[dict]:
    return [json.loads(line) for line in ASSET.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 1,024-token byte-level BPE trained on the asset's sentences (most words are 2+ tokens)."""
    from biglm.data import train_tokenizer

    root = tmp_path_factory.mktemp("real")
    (root / "text.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in sentences()))
    train_tokenizer([root / "text.jsonl"], 1024, root / "tok")
    return root / "tok"


def random_checkpoint(folder: Path, tokenizer_dir: Path, layers: int = 2, hidden: int = 128, seed: int = 0) -> Path:
    from biglm.data import load_tokenizer

    torch.manual_seed(seed)
    cfg = ModelConfig("test", 1024, hidden, layers, 4, 2, 2 * hidden, max_seq_len=128, init_std=0.06)
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, load_tokenizer(tokenizer_dir))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_copying_a_source_is_copying_its_tokens(tokenizer_dir):
    """Source and target are tokenised as running text: a target that repeats the source, its first word
    included, has exactly the source's tokens. Before, the source's first word was tokenised as at a text's
    start ("Ġprocessing" against "process"+"ing"), which also shifted every later target token."""
    from biglm.data import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    text = "processing partial video considered mechanics metallic"
    for source_space, same in ((True, True), (False, False)):
        cfg = load_finetune_config(None, ["--task.kind", "seq2seq", "--task.seq2seq.source_space", str(source_space)])
        (ex,) = build_task(cfg, tok, 128).encode([Record({"source": text, "target": text}, "x:1")])
        assert (ex.source == ex.target) is same


@pytest.mark.parametrize("mode", ["aligned", "continue"])
def test_targets_sit_where_the_engine_decodes_them(tokenizer_dir, mode):
    """The engine's pass over an all-[MASK] target gives the logits the fine-tuning row gives for the same
    example with all of its target masked: training and decoding place the target alike, in either position
    mode, with and without the prefix cache."""
    from biglm.data import load_tokenizer
    from biglm.generate.engine import encode_prefix, suffix_logits
    from biglm.train.batches import RowSeeds

    tok = load_tokenizer(tokenizer_dir)
    cfg = load_finetune_config(None, ["--task.kind", "seq2seq", "--task.seq2seq.length", "eos",
                                      "--task.seq2seq.max_target_length", "6", "--task.seq2seq.min_mask_ratio", "1",
                                      "--task.seq2seq.target_positions", mode])
    task = build_task(cfg, tok, 128)
    torch.manual_seed(0)
    model = BiGLM(task.model_config(ModelConfig("t", 1024, 128, 2, 4, 2, 256, max_seq_len=128))).eval()
    assert model.config.suffix_positions == mode
    (ex,) = task.encode([Record({"source": "the river ran far away", "target": "the river"}, "x:1")])
    batch = task.batcher()([ex], RowSeeds(0, 0))  # min_mask_ratio 1: all of Y masked
    x = len(ex.source) + 1
    start = 1 if mode == "aligned" else x
    assert batch.position_ids[0, x:].tolist() == list(range(start, start + 6))
    assert batch.input_ids[0, x:].tolist() == [tok.mask_token_id] * 6
    with torch.no_grad():
        trained = model(batch.input_ids, batch.layout, batch.position_ids).logits[0, x:]
        for cache in (True, False):
            prefix = encode_prefix(model, [[tok.bos_token_id, *ex.source]], use_cache=cache)
            masks = torch.full((1, 6), tok.mask_token_id)
            decoded = suffix_logits(model, prefix, masks, torch.ones(1, 6, dtype=torch.bool))[0]
            torch.testing.assert_close(decoded, trained, atol=2e-5, rtol=1e-4)


def copy_rows(words: list[str], n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    seqs = word_sequences(words, n, random.Random(seed), 3, 5, exclude)
    return [{"id": str(i), "source": s, "target": s} for i, s in enumerate(seqs)]


@pytest.mark.slow
def test_seq2seq_copies_real_words(tokenizer_dir, tmp_path):
    """Masked seq2seq with the project's recipe copies 3-5 real words (1-4 BPE tokens each) it never saw
    together, from random weights: before the fix (target positions after the source, the first word tokenised
    apart) the same run stayed near 0% exact match."""
    words = vocabulary((r["text"] for r in sentences()), 600)
    valid = copy_rows(words, 100, 1)
    train = copy_rows(words, 2000, 0, exclude={r["source"] for r in valid})
    init = random_checkpoint(tmp_path / "init", tokenizer_dir)
    cfg = load_finetune_config(None, [
        "--init", str(init), "--task.kind", "seq2seq", "--task.seq2seq.max_target_length", "24",
        "--task.seq2seq.metrics", "[exact_match, rouge]", "--data.train", write_jsonl(tmp_path / "t.jsonl", train),
        "--data.valid", write_jsonl(tmp_path / "v.jsonl", valid), "--train.steps", "500", "--train.lr", "3e-3",
        "--train.warmup_steps", "30", "--train.eval_every", "500", "--train.progress", "false",
        "--train.tensorboard", "false"])
    trainer = setup_finetune(cfg, tmp_path / "run")
    trainer.fit()
    trainer.close()
    scores, _, _ = evaluate_split(load_predictor(tmp_path / "run"), "valid")
    assert scores["exact_match"] >= 50.0, scores
    assert scores["rougeL"] >= 85.0, scores


@pytest.mark.slow
def test_cloze_on_a_surface_feature_generalises_to_new_sentences(tokenizer_dir, tmp_path):
    """"Does this sentence contain a number?" with verbalizers of different token counts: fine-tuned on 600
    real sentences from random weights, right on at least 90% of 400 sentences it never saw. (When the blank's
    width told the label, such runs fitted the training set and stayed near chance on new sentences.)"""
    from biglm.data import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    yes, no = tok([" yes", " no"], add_special_tokens=False)["input_ids"]
    rows = sentences()
    train, test = rows[:600], rows[600:]
    init = random_checkpoint(tmp_path / "init", tokenizer_dir)
    verbalizer = '{"yes": "yes", "no": "no"}' if len(yes) != len(no) else '{"yes": "yes", "no": "not one"}'
    cfg = load_finetune_config(None, [
        "--init", str(init), "--task.kind", "cloze-classification", "--task.cloze_classification.template",
        "{text} Does it contain a number? {blank}", "--task.cloze_classification.verbalizer", verbalizer,
        "--data.train", write_jsonl(tmp_path / "t.jsonl", train),
        "--data.test", write_jsonl(tmp_path / "s.jsonl", test),
        "--train.epochs", "10", "--train.lr", "3e-3", "--train.warmup_steps", "10", "--train.progress", "false",
        "--train.tensorboard", "false"])
    predictor_task = build_task(cfg, tok, 128)
    assert len({len(v) for v in predictor_task.spaced}) == 1  # padded to one width...
    assert len(yes) != len(no) or verbalizer.endswith('"not one"}')  # ...from verbalizers of different widths
    trainer = setup_finetune(cfg, tmp_path / "run")
    trainer.fit()
    trainer.close()
    scores, _, _ = evaluate_split(load_predictor(tmp_path / "run"), "test")
    assert scores["accuracy"] >= 90.0, scores


def test_word_tasks_hold_out_their_sequences_and_reverse_words(tmp_path):
    """make_wordtasks: validation and test sequences never occur in training, reversal reverses words (not
    tokens), the number set is balanced and labelled by digits, and --out may not be the corpus it reads."""
    from biglm.data.builders.make_wordtasks import main as make

    corpus = tmp_path / "wiki.jsonl"
    docs = [json.dumps({"text": f"Title {i}\n{r['text']}"}) + "\n" for i, r in enumerate(sentences())]
    corpus.write_text("".join(docs))
    assert make([str(corpus), "--out", str(corpus)]) == 2
    assert make([str(corpus), "--out", str(tmp_path / "t"), "--vocab", "300", "--sizes", "400", "50", "50",
                 "--number-sizes", "100", "40", "40"]) == 0
    rows = {name: [json.loads(line) for line in (tmp_path / "t" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("copy_train", "copy_valid", "copy_test", "reverse_valid", "number_train")}
    train = {r["source"] for r in rows["copy_train"]}
    assert not train & {r["source"] for r in rows["copy_valid"] + rows["copy_test"]}
    assert all(r["target"].split() == r["source"].split()[::-1] for r in rows["reverse_valid"])
    labels = [r["label"] for r in rows["number_train"]]
    assert labels.count("yes") == labels.count("no") == 50
    assert all((r["label"] == "yes") == any(c.isdigit() for c in r["text"]) for r in rows["number_train"])


def test_word_tasks_take_a_word_count_range(tmp_path, capsys):
    """make_wordtasks --words MIN MAX: every copy / reversal sequence has MIN..MAX words (the frontier bench's
    longer copies); a range with MIN > MAX is one error line, exit status 2."""
    from biglm.data.builders.make_wordtasks import main as make

    corpus = tmp_path / "wiki.jsonl"
    docs = [json.dumps({"text": f"Title {i}\n{r['text']}"}) + "\n" for i, r in enumerate(sentences())]
    corpus.write_text("".join(docs))
    sizes = ["--vocab", "300", "--sizes", "100", "20", "20", "--number-sizes", "20", "10", "10"]
    assert make([str(corpus), "--out", str(tmp_path / "t"), "--words", "8", "12", *sizes]) == 0
    counts = {len(json.loads(line)["source"].split()) for split in ("train", "valid", "test")
              for line in (tmp_path / "t" / f"copy_{split}.jsonl").read_text().splitlines()}
    assert min(counts) >= 8 and max(counts) <= 12 and len(counts) > 2
    assert make([str(corpus), "--out", str(tmp_path / "u"), "--words", "6", "3", *sizes]) == 2
    assert "--words 6 3" in capsys.readouterr().err
