"""The family registry: no code outside ``biglm/families`` branches on a family's name, and a new family is one
``Family`` record plus one registry line. The toy family below reuses the causal family's mechanisms under a
new name, refuses a task kind of its own and pools rewards its own way: every verb takes it without an edit,
and where it uses the causal mechanisms it computes exactly what a causal model with the same weights does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import load_model
from biglm.errors import BiglmError, ConfigError
from biglm.families import FAMILIES, Family, get_family, objective_families, register_family
from biglm.generate import generate
from conftest import make_checkpoint, word_tokenizer
from test_train_cli import corpus, pretrain  # noqa: F401  (fixture re-used)

SRC = Path(__file__).resolve().parents[2] / "src" / "biglm"

# The whole of a new family: one record (a module of its own in biglm/families/) ...
TOY = Family(
    name="toy-lr",
    summary="a left-to-right model for tests: the causal mechanisms, its own refusals and reward pooling",
    objectives=("causal",),
    layout="causal",
    decoder="autoregressive",
    scoring="chain-rule",
    directions=("l2r",),
    reward_pooling="mean",
    refused_tasks={"cloze-classification": "a left-to-right model has no blank to fill",
                   "seq2seq": "the toy family writes no seq2seq targets"},
    export="causal-lm",
    eval_variants=(("l2r", {"direction": "l2r"}),),
)


@pytest.fixture
def toy():
    register_family(TOY)  # ... and one registry line (``FAMILIES`` in biglm/families/__init__.py)
    yield TOY
    FAMILIES.pop(TOY.name)


def test_no_code_outside_the_family_modules_branches_on_a_family_name():
    pattern = re.compile(r"family (==|!=|in) ")
    hits = [f"{path.relative_to(SRC)}:{n}: {line.strip()}" for path in sorted(SRC.rglob("*.py"))
            if "families" not in path.parts
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_the_registry_knows_each_family_and_refuses_unknown_ones(toy):
    assert list(FAMILIES)[:4] == ["masked", "causal", "bidirectional-ar", "glm"]
    assert get_family(ModelConfig.from_preset("micro", family="toy-lr")) is toy
    assert objective_families("causal") == ("causal", "toy-lr", "bidirectional-ar")  # by the objective's place
    with pytest.raises(ConfigError, match="model family 'nope': expected one of masked, causal"):
        get_family("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_family(toy)


def test_a_run_config_takes_the_new_family(toy):
    from biglm.train.config import RunConfig

    cfg = RunConfig.from_dict({"model": {"family": "toy-lr"}, "objective": {"preset": "causal"}})
    assert cfg.model.family == "toy-lr" and cfg.model.is_autoregressive
    with pytest.raises(ConfigError, match="does not fit objective 'biglm'"):
        RunConfig.from_dict({"model": {"family": "toy-lr"}, "objective": {"preset": "biglm"}})


@pytest.fixture
def twins(tmp_path, toy):
    """Checkpoints of the same weights, one of the causal family and one of the toy family."""
    return {f: make_checkpoint(tmp_path / f, family=f, seed=3) for f in ("causal", "toy-lr")}


def test_generation_scoring_and_export_equal_the_causal_family_on_the_same_weights(twins, tmp_path):
    from transformers import AutoModelForCausalLM

    from biglm.evaluate.ar_scoring import score_continuations
    from biglm.hf.convert import export_hf

    prompts = ["a b c", "yes no maybe so"]
    texts = {f: generate(ck, prompts, max_new_tokens=6, strategy="sample", temperature=1.0, seed=7)
             for f, ck in twins.items()}
    assert texts["toy-lr"] == texts["causal"]
    with pytest.raises(BiglmError, match="direction='r2l' needs a bidirectional-ar model"):
        generate(twins["toy-lr"], "a b", direction="r2l")
    models = {f: load_model(ck).model.eval() for f, ck in twins.items()}
    pairs = [([9, 10, 11], [12, 13]), ([20], [21, 22])]
    scores = {f: [s.logprob for s in score_continuations(m, pairs, bos_token_id=1, eos_token_id=2)]
              for f, m in models.items()}
    assert scores["toy-lr"] == pytest.approx(scores["causal"], abs=1e-6)
    ids = torch.tensor([[1, 9, 10, 11, 12]])
    logits = {}
    for f, ck in twins.items():
        out = export_hf(ck, tmp_path / f"hf-{f}")
        hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
        with torch.no_grad():
            logits[f] = hf(ids).logits
    assert torch.allclose(logits["toy-lr"], logits["causal"], atol=1e-5)


def test_chat_decodes_the_new_family_token_by_token(twins):
    from biglm.chat.session import ChatModel

    chat = ChatModel.load(twins["toy-lr"])
    assert chat.family == "toy-lr" and chat.decoder == "autoregressive"
    reply = chat.reply([{"role": "user", "content": "a b c"}])
    assert reply.forward_passes >= 1


def test_growth_checks_the_new_family_under_its_layout(toy):
    from biglm.grow.api import family_layout

    rows = torch.arange(8).view(1, 8)
    assert family_layout("toy-lr", rows).kind == "causal"
    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="toy-lr")).eval()
    assert model.config.is_autoregressive


def test_word_tokenizer_prompts_encode_as_plain_text(toy):
    tok = word_tokenizer()
    assert toy.encode_prompt(tok, "a b") == tok("a b", add_special_tokens=False)["input_ids"]


def test_pretraining_a_new_family_runs_and_records_it(tmp_path, corpus, toy):  # noqa: F811
    run = tmp_path / "run"
    assert pretrain(run, corpus, "--model.family", "toy-lr", "--objective.preset", "causal",
                    "--train.steps", "6", "--train.eval_every", "3", "--train.save_every", "6") == 0
    loaded = load_model(run)
    assert loaded.config.family == "toy-lr"
    assert isinstance(generate(loaded, "the cat", max_new_tokens=4), str)
