"""The transformers integration: export/import round trip, remote code in a fresh process, fill-mask,
prefix-blind regions, starting from a Llama model, and one-line errors."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.cli import main as cli_main
from biglm.errors import BiglmError
from biglm.hf import BiGLMConfig, BiGLMForMaskedLM
from biglm.hf.convert import export_hf, import_hf, import_llama, llama_config, named_like_preset

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "my cat is on a mat"]
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[MASK]"]
TEXT = "the cat [MASK] on the mat"
TOL = 1e-5


def make_tokenizer(specials: list[str] = SPECIALS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SENTENCES (no hub)."""
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    names = {"[PAD]": "pad_token", "[BOS]": "bos_token", "[EOS]": "eos_token", "[UNK]": "unk_token",
             "[MASK]": "mask_token"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{names[s]: s for s in specials})


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-init random weights (norm weights and biases too) so outputs are far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.15 * noise)


def make_checkpoint(folder: Path, seed: int, **overrides) -> Path:
    tok = make_tokenizer()
    config = ModelConfig.from_preset("micro", vocab_size=64, **overrides)
    model = BiGLM(config)
    randomize(model, seed)
    return write_checkpoint(folder, model_state_dict(model), config, tok, step=7)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A: the defaults (RMSNorm, tied, full RoPE); B: LayerNorm, untied head, half RoPE, length head."""
    root = tmp_path_factory.mktemp("hf")
    a = make_checkpoint(root / "ckpt_a", 0)
    b = make_checkpoint(root / "ckpt_b", 1, norm="layernorm", tie_embeddings=False, rotary_fraction=0.5,
                        length_head=True, max_target_length=16, rope_theta=500.0)
    return {"a": a, "b": b, "hf_a": export_hf(a, root / "hf_a"), "hf_b": export_hf(b, root / "hf_b"),
            "root": root}


def test_config_defaults_mirror_model_config() -> None:
    hf = BiGLMConfig()
    for field in dataclasses.fields(ModelConfig):
        assert getattr(hf, field.name) == field.default, field.name
    assert (hf.num_hidden_layers, hf.num_key_value_heads, hf.tie_word_embeddings) == (30, 3, True)


def test_round_trip_is_exact(ckpts: dict[str, Path], tmp_path: Path) -> None:
    for key in ("a", "b"):
        back = import_hf(ckpts[f"hf_{key}"], tmp_path / key)
        before = load_file(str(ckpts[key] / "model.safetensors"))
        after = load_file(str(back / "model.safetensors"))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        old, new = load_model(ckpts[key]), load_model(back)
        assert new.config == old.config and new.meta["step"] == 7
        assert new.tokenizer.get_vocab() == old.tokenizer.get_vocab()
    cfg = json.loads((ckpts["hf_a"] / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForMaskedLM"] == "modeling_biglm.BiGLMForMaskedLM"
    assert cfg["model_type"] == "biglm" and cfg["biglm_format_version"] == 1


def test_remote_code_is_self_contained(ckpts: dict[str, Path]) -> None:
    allowed = {"__future__", "math", "dataclasses", "typing", "torch", "transformers"}
    for name in ("configuration_biglm.py", "modeling_biglm.py", "decoding_biglm.py"):
        tree = ast.parse((ckpts["hf_a"] / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= allowed, name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (name, node.module)


def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 64, (3, 12), generator=gen)
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, 8:], am[2, 5:] = 0, 0
    regions = torch.zeros(3, 12, dtype=torch.int8)
    regions[:, 7:] = 1
    return {"ids": ids, "am": am, "regions": regions}


FRESH = """
import sys, torch
from transformers import AutoModelForMaskedLM, pipeline
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"]
inp, res = torch.load(sys.argv[1]), {}
for key in ("hf_a", "hf_b"):
    model = AutoModelForMaskedLM.from_pretrained(sys.argv[2 if key == "hf_a" else 3], trust_remote_code=True)
    model.eval()
    with torch.no_grad():
        res[key] = {"plain": model(inp["ids"]).logits, "module": type(model).__module__,
                    "padded": model(inp["ids"], attention_mask=inp["am"]).logits}
res["fill"] = pipeline("fill-mask", model=sys.argv[2], trust_remote_code=True, top_k=5)(sys.argv[4])
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"], "remote code imported biglm"
torch.save(res, sys.argv[5])
"""


def test_fresh_process_logits_and_fill_mask(ckpts: dict[str, Path], tmp_path: Path) -> None:
    inp = inputs()
    torch.save(inp, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "inputs.pt"), str(ckpts["hf_a"]),
                           str(ckpts["hf_b"]), TEXT, str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "out.pt", weights_only=False)
    real = inp["am"].bool()
    for key in ("a", "b"):
        model = load_model(ckpts[key]).model
        assert res[f"hf_{key}"]["module"].startswith("transformers_modules")
        with torch.no_grad():
            plain = model(inp["ids"]).logits
            padded = model(inp["ids"], AttentionLayout("bidirectional", torch.where(real, 0, -1))).logits
            alone = model(inp["ids"][2:, :5]).logits[0]
        assert (res[f"hf_{key}"]["plain"] - plain).abs().max() <= TOL
        assert (res[f"hf_{key}"]["padded"] - padded).abs().max() <= TOL
        assert (res[f"hf_{key}"]["padded"][2, :5] - alone).abs().max() <= TOL  # padding changes nothing
    loaded = load_model(ckpts["a"])
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    pos = int((enc["input_ids"][0] == loaded.tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probs = loaded.model(enc["input_ids"]).logits[0, pos].softmax(-1)
    top = probs.topk(5)
    assert [r["token"] for r in res["fill"]] == top.indices.tolist()
    assert torch.allclose(torch.tensor([r["score"] for r in res["fill"]]), top.values, atol=TOL, rtol=0)


def test_regions_give_prefix_blind_and_length_head(ckpts: dict[str, Path]) -> None:
    inp = inputs()
    hf = BiGLMForMaskedLM.from_pretrained(str(ckpts["hf_b"])).eval()
    biglm = load_model(ckpts["b"]).model
    real = inp["am"].bool()
    layout = AttentionLayout("prefix_blind", torch.where(real, 0, -1), inp["regions"])
    prefix = (inp["regions"] == 0) & real
    with torch.no_grad():
        ref = biglm(inp["ids"], layout, length_mask=prefix)
        out = hf(inp["ids"], attention_mask=inp["am"], regions=inp["regions"], length_mask=prefix)
        bidi = hf(inp["ids"], attention_mask=inp["am"]).logits
    assert (out.logits - ref.logits).abs().max() <= TOL
    assert (out.length_logits - ref.length_logits).abs().max() <= TOL
    assert (out.logits - bidi).abs().max() > 1e-3  # the regions really change the mask


def test_hf_training_path(ckpts: dict[str, Path]) -> None:
    hf = BiGLMForMaskedLM.from_pretrained(str(ckpts["hf_a"]))
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    ids = inputs()["ids"]
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    hf.train()
    out = hf(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, 3], ids[:, 3])
    assert torch.allclose(out.loss, ref)
    out.loss.backward()
    grads = [p.grad.clone() for p in hf.parameters()]
    hf.zero_grad()
    getattr(hf, "activation_checkpointing_enable", hf.gradient_checkpointing_enable)()
    hf(ids, labels=labels).loss.backward()
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(grads, hf.parameters()))


def save_llama(folder: Path, **overrides) -> LlamaForCausalLM:
    tok = make_tokenizer(["[UNK]", "[BOS]", "[EOS]"])  # no [MASK], no [PAD]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, rope_theta=5000.0, rms_norm_eps=1e-6,
                      max_position_embeddings=256, tie_word_embeddings=False, **overrides)
    llama = LlamaForCausalLM(cfg).eval()
    randomize(llama, 5)
    llama.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return llama


def test_import_llama_is_bidirectional_llama(tmp_path: Path) -> None:
    llama = save_llama(tmp_path / "llama")
    n = llama.config.vocab_size
    argv = ["import-hf", "--from-llama", str(tmp_path / "llama"), "--out", str(tmp_path / "ck")]
    assert cli_main(argv) == 0
    loaded = load_model(tmp_path / "ck")
    cfg, tok = loaded.config, loaded.tokenizer
    assert cfg.vocab_size == 64 and len(tok) == n + 2  # [MASK] and [PAD] added, padded to 64 rows
    assert (tok.mask_token, tok.pad_token) == ("[MASK]", "[PAD]")
    assert (cfg.rope_theta, cfg.norm_eps, cfg.tie_embeddings, cfg.num_kv_heads) == (5000.0, 1e-6, False, 2)
    emb = loaded.model.model.embed_tokens.weight
    assert torch.equal(emb[tok.mask_token_id], llama.model.embed_tokens.weight.mean(0))
    ids = torch.randint(0, n, (2, 10), generator=torch.Generator().manual_seed(0))
    full = torch.ones(2, 1, 10, 10, dtype=torch.bool)  # a 4D mask is used as given: no causal masking
    with torch.no_grad():
        ref = llama.lm_head(llama.model(ids, attention_mask=full).last_hidden_state)
        causal = llama(ids).logits
        got = loaded.model(ids).logits[..., :n]
    assert (got - ref).abs().max() <= TOL
    assert (ref - causal).abs().max() > 1e-3  # the reference is really non-causal


def test_smollm_shape_is_biglm_136m() -> None:
    smollm = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
              "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": True, "rope_scaling": None, "hidden_act": "silu"}
    cfg = named_like_preset(dataclasses.replace(llama_config(smollm, "config.json"), vocab_size=49216))
    assert cfg == ModelConfig.from_preset("biglm-136m")


def rewrite(folder: Path, edit) -> None:
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_errors_are_one_line(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["hf_a"], bad)
    rewrite(bad, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(BiglmError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected "
                                         r"shape \(128, 64\)\)"):
        import_hf(bad, tmp_path / "x")
    shutil.copytree(ckpts["hf_a"], bad, dirs_exist_ok=True)
    rewrite(bad, lambda s: s.__setitem__("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 64)))
    with pytest.raises(BiglmError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 64\), "
                                         r"the model config expects \(32, 64\)"):
        import_hf(bad, tmp_path / "x")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "biglm_format_version": 99}))
    assert cli_main(["import-hf", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "biglm_format_version 99 is newer" in err and err.count("\n") == 1
    newer = tmp_path / "newer"
    shutil.copytree(ckpts["a"], newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BiglmError, match="checkpoint format version 99 is newer"):
        export_hf(newer, tmp_path / "y")
    assert cli_main(["export-hf", "--ckpt", str(ckpts["a"]), "--out", str(ckpts["hf_a"])]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli_main(["import-hf", str(ckpts["hf_a"]), "--out", str(tmp_path / "z"), "--tokenizer", "t"]) == 2
    assert "--tokenizer is only used with --from-llama" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "is not supported (biglm has plain RoPE)"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
])
def test_llama_unsupported_features(tmp_path: Path, override: dict, message: str) -> None:
    save_llama(tmp_path / "llama", **override)
    with pytest.raises(BiglmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_llama(tmp_path / "llama", tmp_path / "out")


def test_export_push_to_hub(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict]] = []
    create = lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    monkeypatch.setattr(HfApi, "create_repo", create)

    def upload(self, **kw):
        calls.append(("upload", kw["repo_id"], sorted(os.listdir(kw["folder_path"]))))

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    out = tmp_path / "pushed"
    assert cli_main(["export-hf", "--ckpt", str(ckpts["root"] / "ckpt_a"), "--out", str(out),
                     "--push-to-hub", "user/biglm-micro", "--private"]) == 0
    expected = {"private": True, "exist_ok": True, "repo_type": "model"}
    assert calls[0] == ("create", "user/biglm-micro", expected)
    assert calls[1][:2] == ("upload", "user/biglm-micro")
    assert {"config.json", "model.safetensors", "modeling_biglm.py", "configuration_biglm.py",
            "tokenizer.json"} <= set(calls[1][2])


def test_force_never_replaces_the_source(ckpts: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    import shutil

    run = tmp_path / "runs" / "r"
    shutil.copytree(ckpts["a"], run / "checkpoints" / "step_00000007")
    hf = shutil.copytree(ckpts["hf_a"], tmp_path / "hf")
    save_llama(tmp_path / "llama")
    cases = [
        (["export-hf", "--ckpt", str(run), "--out", str(run)], "is the source"),
        (["export-hf", "--ckpt", str(run), "--out", str(tmp_path / "runs")], "contains the source"),
        (["export-hf", "--ckpt", str(run), "--out", str(run / "checkpoints")], "contains the source"),
        (["import-hf", str(hf), "--out", str(hf)], "is the source"),
        (["import-hf", str(hf), "--out", str(tmp_path)], "contains the source"),
        (["import-hf", "--from-llama", str(tmp_path / "llama"), "--out", str(tmp_path / "llama")], "is the source"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert cli_main([*argv, "--force"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "replacing it would delete the source" in err and len(err.splitlines()) == 1
    assert load_model(run).meta["step"] == 7 and (hf / "model.safetensors").is_file()
    assert (tmp_path / "llama" / "config.json").is_file()
    # --force never empties a folder of another kind (here one holding notes, no config.json) ...
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.txt").write_text("x")
    assert cli_main(["export-hf", "--ckpt", str(run), "--out", str(tmp_path / "old"), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty and not a transformers folder" in err and len(err.splitlines()) == 1, err
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["stale.txt"]
    # ... and replaces an earlier export only once the new folder is whole.
    (hf / "stale.txt").write_text("x")
    assert cli_main(["export-hf", "--ckpt", str(run), "--out", str(hf), "--force"]) == 0
    assert sorted(p.name for p in hf.iterdir())[:2] == ["README.md", "config.json"]
    assert not (hf / "stale.txt").exists() and not list(tmp_path.glob(".old-*"))


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "config.json").write_text('{"model_type": "biglm", "hidden_size": 64,'),
     r"config.json:1: not valid JSON \(Expecting"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), r"config.json: expected a JSON object, got list"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        {**json.loads((d / "config.json").read_text()), "hidden_size": "wide"})),
     r"config.json: model.hidden_size='wide': expected int"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
     r"model.safetensors: cannot be read, truncated or damaged"),
])
def test_import_damaged_folder_is_one_line(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                           edit, message: str) -> None:
    import re
    import shutil

    bad = shutil.copytree(ckpts["hf_a"], tmp_path / "bad")
    edit(bad)
    assert cli_main(["import-hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
