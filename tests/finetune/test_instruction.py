"""Instruction and chat data: the chat template stored with the tokenizer, BatGPT's multi-turn pairs,
FLAN records, bad input, history cut to the context, mixtures, and response-only loss for causal models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.data.chat import ChatFields, fit_history, record_messages, render_prompt, set_chat_template
from biglm.data.records import read_records
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.errors import BiglmError
from biglm.finetune import load_finetune_config
from biglm.finetune.setup import prepare, read_split
from biglm.objectives import IGNORE_INDEX
from biglm.train.batches import RowSeeds
from instruction_data import instruction_tokenizer

CHAT = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": "reverse a b c"},
        {"role": "assistant", "content": "c b a"}, {"role": "user", "content": "caps this d e"},
        {"role": "assistant", "content": "D E"}]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def checkpoint(folder: Path, family: str = "masked", max_seq_len: int = 64) -> Path:
    torch.manual_seed(0)
    tok = instruction_tokenizer()
    glm = {}
    if family == "glm":  # GLM's blank and span tokens, 2D positions
        ensure_glm_tokens(tok)
        glm = {"position_encoding": "rope-2d"}
    cfg = ModelConfig("test", len(tok), 32, 1, 4, 2, 64, max_seq_len=max_seq_len, family=family, **glm)
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, tok)


def task_for(tmp_path: Path, records: list[dict], *overrides: str, family: str = "masked", max_seq_len: int = 64):
    init = checkpoint(tmp_path / f"init-{family}-{max_seq_len}", family, max_seq_len)
    cfg = load_finetune_config(None, ["--init", str(init), "--task.kind", "instruction", "--data.train",
                                      write_jsonl(tmp_path / "train.jsonl", records),
                                      "--task.instruction.max_target_length", "8", *overrides])
    prepared = prepare(cfg)
    return prepared, read_split(prepared.cfg, "train", prepared.task)


def test_multi_turn_pairs_match_the_chat_template_and_the_exported_tokenizer(tmp_path):
    prepared, examples = task_for(tmp_path, [{"messages": CHAT}])
    tok = prepared.tokenizer
    assert len(examples) == 1  # by default only the last assistant turn is a target (BatGPT: history = X)
    ex = examples[0]
    # X is exactly what apply_chat_template gives for the history with the generation prompt (BOS first).
    expected = tok.apply_chat_template(CHAT[:-1], add_generation_prompt=True)["input_ids"]
    assert [prepared.task.ids.bos, *ex.source] == list(expected)
    assert tok.decode(ex.source) == "System: be helpful User: reverse a b c Assistant: c b a [EOS] User: caps this " \
                                    "d e Assistant:"
    assert tok.decode(ex.target) == "D E" and ex.target_text == "D E"
    # X + Y + EOS reads as the template's rendering of the whole conversation.
    assert [prepared.task.ids.bos, *ex.source, *ex.target, prepared.task.ids.eos] == \
        list(tok.apply_chat_template(CHAT)["input_ids"])
    # The template travels with the tokenizer: a saved copy (what checkpoints and export-hf write) renders the same.
    tok.save_pretrained(tmp_path / "saved")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.apply_chat_template(CHAT[:-1], add_generation_prompt=True)["input_ids"] == expected


def test_all_turns_makes_every_assistant_turn_a_target(tmp_path):
    _, examples = task_for(tmp_path, [{"id": "c", "messages": CHAT}], "--task.instruction.all_turns", "true")
    assert [ex.id for ex in examples] == ["c-2", "c-4"]
    assert [ex.target_text for ex in examples] == ["c b a", "D E"]
    assert len(examples[0].source) < len(examples[1].source)  # the second turn sees the first in its history


def test_flan_records_and_the_system_prompt(tmp_path):
    tok = instruction_tokenizer()
    set_chat_template(tok)
    names = ChatFields()
    msgs = record_messages({"instruction": "reverse this", "input": "a b", "output": "b a"}, "x:1", names,
                           system_prompt="be helpful")
    assert msgs == [{"role": "system", "content": "be helpful"}, {"role": "user", "content": "reverse this\n\na b"},
                    {"role": "assistant", "content": "b a"}]
    assert render_prompt(tok, msgs[:-1]) == "System: be helpful\nUser: reverse this\n\na b\nAssistant:"
    no_input = record_messages({"instruction": "caps it", "input": "", "output": "A"}, "x:2", names)
    assert no_input[0]["content"] == "caps it"


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "a"}]},
     "message 0 has unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     "message 0 (user) has empty content"),
    ({"messages": [{"role": "user", "content": "a b"}]}, "the last message is 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "a system message may only come first"),
    ({"messages": "hello"}, "messages must be a non-empty list"),
    ({"text": "a b"}, "neither 'messages' nor 'instruction'"),
    ({"instruction": "reverse", "input": "a"}, "field 'output' must be a string"),
])
def test_bad_records_give_one_line_errors_naming_the_line(tmp_path, record, message):
    with pytest.raises(BiglmError) as e:
        task_for(tmp_path, [{"messages": CHAT}, record])
    assert message in str(e.value) and "train.jsonl:2" in str(e.value) and "\n" not in str(e.value)


def test_a_history_longer_than_the_model_keeps_its_latest_turns(tmp_path, capsys):
    long_chat = [{"role": "system", "content": "be helpful"}]
    for _ in range(8):
        long_chat += [{"role": "user", "content": "reverse a b c"}, {"role": "assistant", "content": "c b a"}]
    long_chat += [{"role": "user", "content": "caps this a"}, {"role": "assistant", "content": "A"}]
    prepared, examples = task_for(tmp_path, [{"messages": long_chat}], max_seq_len=40)
    ex = examples[0]
    budget = 40 - 1 - 8
    assert len(ex.source) <= budget
    text = prepared.tokenizer.decode(ex.source)
    assert text.startswith("System: be helpful User:")  # the system message stays, the oldest turns go
    assert text.endswith("User: caps this a Assistant:")  # the question being answered is kept whole
    err = capsys.readouterr().err
    assert "1 prompt(s) longer than 31 tokens" in err and "oldest turn(s) dropped" in err
    # A last turn that alone is too long keeps its end (the tokens next to the reply).
    tok = prepared.tokenizer
    ids, dropped, cut = fit_history(tok, [{"role": "user", "content": " ".join(["a"] * 50)}], 10)
    assert len(ids) == 10 and cut and dropped == 0 and tok.decode(ids).endswith("a a Assistant:")


def test_mixture_shares_follow_the_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "reverse this", "input": "a b", "output": "b a"}] * 30)
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": CHAT}] * 10)
    init = checkpoint(tmp_path / "init")
    mixture = json.dumps([{"path": a, "weight": 1}, {"path": b, "weight": 3}])
    cfg = load_finetune_config(None, ["--init", str(init), "--task.kind", "instruction",
                                      "--task.instruction.mixture", mixture, "--task.instruction.max_target_length",
                                      "8"])
    prepared = prepare(cfg)
    examples = read_split(prepared.cfg, "train", prepared.task, required=True)
    from_b = sum(ex.target_text == "D E" for ex in examples)
    assert len(examples) == 40 and from_b == 30  # 40 examples per epoch, 3/4 of them from b (repeated)
    with pytest.raises(Exception, match=r"mixture\[0\].weight=-1"):
        load_finetune_config(None, ["--task.kind", "instruction", "--task.instruction.mixture",
                                    json.dumps([{"path": a, "weight": -1}])])


@pytest.mark.parametrize("family", ["causal", "bidirectional-ar"])
def test_autoregressive_models_put_the_loss_on_the_reply_only(tmp_path, family):
    prepared, examples = task_for(tmp_path, [{"messages": CHAT}], family=family)
    task = prepared.task
    assert not prepared.cfg.model.length_head  # no length head: the model learns to stop with EOS
    batch = task.batcher()(examples, RowSeeds(0, 0))
    ex = examples[0]
    assert batch.layout.kind == "causal"
    tokens = [task.ids.bos, *ex.source, *ex.target, task.ids.eos]
    assert batch.input_ids[0].tolist() == tokens[:-1]  # nothing masked: read left to right
    labels = batch.labels[0].tolist()
    n = len(ex.source)
    assert labels[:n] == [IGNORE_INDEX] * n  # no loss on the prompt (history, system, role labels)
    assert labels[n:] == [*ex.target, task.ids.eos]  # position t predicts token t+1: the reply, then EOS
    loss = task.criterion()(BiGLM(prepared.cfg.model), batch)
    assert set(loss.terms) == {"mlm"} and int(loss.parts["y"][1]) == len(ex.target) + 1


def test_glm_models_write_the_reply_in_part_b_after_gmask(tmp_path):
    prepared, examples = task_for(tmp_path, [{"messages": CHAT}], family="glm")
    task, ex = prepared.task, examples[0]
    assert type(task).__name__ == "GLMInstructionTask" and not prepared.cfg.model.length_head
    g = task.glm
    batch = task.batcher()(examples, RowSeeds(0, 0))
    a = [g.bos, *ex.source, g.gmask]  # the history (chat template) in part A, bidirectional
    assert batch.layout.kind == "prefix_lm"
    assert batch.input_ids[0].tolist() == [*a, g.sop, *ex.target]
    assert batch.layout.regions[0].tolist() == [0] * len(a) + [1] * (len(ex.target) + 1)
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * len(a) + [*ex.target, g.eop]  # the reply, then [eop]
    assert batch.position_ids[0, len(a):, 0].tolist() == [len(a) - 1] * (len(ex.target) + 1)  # at [gMASK]
    loss = task.criterion()(BiGLM(prepared.cfg.model), batch)
    assert torch.isfinite(loss.terms["blank_infilling"])
    # Prediction fills the blank autoregressively (an untrained model: any text, one per example).
    model = BiGLM(prepared.cfg.model).eval()
    predictions = task.predict(model, examples)
    assert len(predictions) == 1 and 1 <= predictions[0]["length"] <= task.max_target


def test_instruction_records_read_through_the_record_readers(tmp_path):
    # The same conversations from a .json list and a .parquet file (the readers hub datasets share).
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"messages": CHAT}, {"instruction": "caps it", "input": "a", "output": "A"}]
    (tmp_path / "chat.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}]), tmp_path / "chat.parquet")
    assert len(read_records(str(tmp_path / "chat.json"))) == 2
    row = read_records(str(tmp_path / "chat.parquet"))[0]
    assert record_messages(row.fields, row.where, ChatFields())[-1] == {"role": "assistant", "content": "D E"}


def test_demo_instruction_set_reads_answers_off_the_text(tmp_path):
    from biglm.data.builders.make_instructions import NUMBERS, WORDS, records

    docs = [f"Alpha Beta\nAlpha Beta is a town in the north of the land number {i}. It is small." for i in range(60)]
    rows = records(docs, "t", 0)
    assert len(rows) == 60 and any("messages" in r for r in rows) and any("instruction" in r for r in rows)
    sentence = "Alpha Beta is a town in the north of the land number {}."
    for row in rows:
        text = sentence.format(row["id"][1:])
        turns = row["messages"] if "messages" in row else [
            {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"},
            {"role": "assistant", "content": row["output"]}]
        assert turns[0]["content"].endswith(text)  # the first question carries the sentence
        for q, a in zip(turns[::2], turns[1::2]):
            question, answer = q["content"].split("\n\n")[0], a["content"]
            n = next((k for k, w in NUMBERS.items() if f" {w} " in f" {question} "), None)
            if "title" in question or "article" in question:
                assert answer == "Alpha Beta"
            elif "last word" in question or "ends" in question:
                assert answer == text.split()[-1].rstrip(".")
            elif "first" in question and "without" not in question and "Drop" not in question:
                assert answer == " ".join(text.split()[:n])
            else:  # the sentence without its first n words ("from word m on": n = m - 1)
                if "from word" in question:
                    n = next(k for k, w in WORDS.items() if f"word {w} on" in question) - 1
                assert answer == " ".join(text.split()[n:])


def test_the_tokenizers_own_chat_template_can_be_kept(tmp_path):
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    cfg = ModelConfig("test", 64, 32, 1, 4, 2, 64, max_seq_len=64)
    tok = instruction_tokenizer()
    tok.chat_template = chatml
    init = write_checkpoint(tmp_path / "init", model_state_dict(BiGLM(cfg)), cfg, tok)
    base = ["--init", str(init), "--task.kind", "instruction", "--data.train",
            write_jsonl(tmp_path / "t.jsonl", [{"messages": CHAT}]), "--task.instruction.max_target_length", "8"]
    kept = prepare(load_finetune_config(None, [*base, "--task.instruction.chat_template", "tokenizer"]))
    assert kept.tokenizer.chat_template == chatml
    example = read_split(kept.cfg, "train", kept.task)[0]
    assert example.target_text == "D E" and kept.tokenizer.decode(example.target) == "D E"
    assert prepare(load_finetune_config(None, base)).tokenizer.chat_template != chatml  # default: biglm's
    with pytest.raises(BiglmError, match="the tokenizer has no chat template"):
        prepare(load_finetune_config(None, [*base, "--init", str(checkpoint(tmp_path / "plain")),
                                            "--task.instruction.chat_template", "tokenizer"]))
