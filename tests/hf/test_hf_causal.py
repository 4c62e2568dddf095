"""Causal / bidirectional-ar export: a plain Llama folder (no remote code) or remote code for what Llama
cannot express; equal logits in a fresh process; transformers' generate() (greedy, beam with n-gram and
length rules, right to left) gives biglm's tokens; the folder imports back exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.generate.api import banned_ids
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.hf.convert import export_hf, import_hf
from test_hf import make_tokenizer, randomize

PROMPTS = [[7, 9, 12], [15, 6, 20, 8, 11]]
BEAM = {"num_beams": 3, "no_repeat_ngram_size": 2, "length_penalty": 0.7}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A: bidirectional-ar, Llama layout (RMSNorm, full rotary, GQA, tied); B: causal, LayerNorm, half rotary,
    untied (remote code)."""
    root = tmp_path_factory.mktemp("hf_causal")
    tok = make_tokenizer()
    out = {}
    for key, seed, over in (("a", 0, {"family": "bidirectional-ar"}),
                            ("b", 1, {"family": "causal", "norm": "layernorm", "rotary_fraction": 0.5,
                                      "tie_embeddings": False})):
        config = ModelConfig.from_preset("micro", vocab_size=64, **over)
        model = BiGLM(config)
        randomize(model, seed)
        out[key] = write_checkpoint(root / f"ckpt_{key}", model_state_dict(model), config, tok, step=5)
        out[f"hf_{key}"] = export_hf(out[key], root / f"hf_{key}")
    return out


def biglm_tokens(ckpt: Path, direction: str = "l2r", **opts) -> list[list[int]]:
    loaded = load_model(ckpt)
    tok = loaded.tokenizer
    allow = [tok.bos_token_id] if direction == "r2l" else []
    options = AROptions(max_new_tokens=10, banned_token_ids=tuple(banned_ids(tok, 64, allow)), **opts)
    return [generate_ar_ids(loaded.model, [p], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            direction=direction, options=options).token_ids[0] for p in PROMPTS]


FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"]
ids, prompts, beam = torch.load(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
res = {}
for key, path in (("a", sys.argv[4]), ("b", sys.argv[5])):
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=(key == "b")).eval()
    cfg, gen = model.config, model.generation_config
    bos, eos = cfg.bos_token_id, cfg.eos_token_id
    def run(x, **kw):
        x = torch.tensor([x])
        out = model.generate(x, max_new_tokens=10, do_sample=False, **kw)[0, x.shape[1]:].tolist()
        stop = kw.get("eos_token_id", eos)
        return out[:out.index(stop)] if stop in out else out
    with torch.no_grad():
        res[key] = {"type": type(model).__name__, "logits": model(ids).logits,
                    "greedy": [run([bos, *p]) for p in prompts],
                    "beam": [run([bos, *p], **beam) for p in prompts]}
        if key == "a":
            allowed = [t for t in gen.suppress_tokens if t != bos]
            res[key]["r2l"] = [run([eos, *p[::-1]], eos_token_id=bos, suppress_tokens=allowed)[::-1] for p in prompts]
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"], "remote code imported biglm"
torch.save(res, sys.argv[6])
"""


def test_fresh_process_logits_and_generate(folders: dict[str, Path], tmp_path: Path) -> None:
    raw = json.loads((folders["hf_a"] / "config.json").read_text())
    assert raw["model_type"] == "llama" and raw["biglm_family"] == "bidirectional-ar"
    assert not (folders["hf_a"] / "modeling_biglm.py").exists()
    assert json.loads((folders["hf_b"] / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
    ids = torch.randint(5, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 1  # BOS
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "ids.pt"), json.dumps(PROMPTS),
                           json.dumps(BEAM), str(folders["hf_a"]), str(folders["hf_b"]), str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "out.pt", weights_only=False)
    assert res["a"]["type"] == "LlamaForCausalLM" and res["b"]["type"] == "BiGLMForCausalLM"
    for key in ("a", "b"):
        model = load_model(folders[key]).model
        with torch.no_grad():
            ours = model(ids, AttentionLayout("causal")).logits
        assert (ours - res[key]["logits"]).abs().max() < 1e-4
        greedy = biglm_tokens(folders[key])
        assert any(greedy), greedy
        assert res[key]["greedy"] == greedy
        assert res[key]["beam"] == biglm_tokens(folders[key], **BEAM)
    assert res["a"]["r2l"] == biglm_tokens(folders["a"], direction="r2l")


def test_causal_folder_imports_back_exactly(folders: dict[str, Path], tmp_path: Path) -> None:
    for key in ("a", "b"):
        back = import_hf(folders[f"hf_{key}"], tmp_path / key)
        before, after = load_model(folders[key]), load_model(back)
        assert after.config == before.config
        a, b = load_file(str(folders[key] / "model.safetensors")), load_file(str(back / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
