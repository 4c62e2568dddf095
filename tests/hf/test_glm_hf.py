"""GLM models exported to transformers: remote code in a fresh process gives the same logits under the
part A / part B layout with 2D positions, and its ``infill()`` fills blanks as ``biglm generate`` does."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.generate import generate
from biglm.hf.convert import export_hf, import_hf
from test_hf import make_tokenizer, randomize

TEXT = "the cat [MASK] on the [MASK]"
NO_BLANK = "the cat sat on"  # continued: only the continuation comes back, from both

FRESH = """
import sys, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"]
inp = torch.load(sys.argv[1])
out = {}
for folder in sys.argv[5:]:
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(inp["ids"], regions=inp["regions"], position_ids=inp["pos"]).logits
    out[folder] = {"logits": logits, "infill": model.infill(tok, sys.argv[3], max_new_tokens=4),
                   "continue": model.infill(tok, sys.argv[4], max_new_tokens=4), "module": type(model).__module__}
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"], "remote code imported biglm"
torch.save(out, sys.argv[2])
"""


def test_glm_export_fresh_process(tmp_path):
    tok = make_tokenizer()
    ensure_glm_tokens(tok)
    ckpts, outs = {}, {}
    for encoding in ("rope-2d", "learned-2d"):
        config = ModelConfig.from_preset("micro", vocab_size=64, family="glm", position_encoding=encoding)
        model = BiGLM(config)
        randomize(model, 0)
        ckpts[encoding] = write_checkpoint(tmp_path / encoding, model_state_dict(model), config, tok, step=3)
        outs[encoding] = export_hf(ckpts[encoding], tmp_path / f"hf-{encoding}")
    # a row: part A of 8 tokens (blank at 3), part B of 4 ([sop] + 3) at (3, 1..4)
    ids = torch.randint(5, 20, (2, 12), generator=torch.Generator().manual_seed(0))
    regions = torch.tensor([[0] * 8 + [1] * 4] * 2, dtype=torch.int8)
    pos = torch.stack([torch.cat([torch.arange(8), torch.full((4,), 3)]),
                       torch.cat([torch.zeros(8, dtype=torch.long), torch.arange(1, 5)])], -1)[None].expand(2, -1, -1)
    torch.save({"ids": ids, "regions": regions, "pos": pos}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt"), TEXT,
                           NO_BLANK, *map(str, outs.values())], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "out.pt", weights_only=False)
    for encoding, ckpt in ckpts.items():
        got = res[str(outs[encoding])]
        assert got["module"].startswith("transformers_modules")
        loaded = load_model(ckpt)
        with torch.no_grad():
            ref = loaded.model(ids, AttentionLayout("prefix_lm", None, regions), pos).logits
        assert (got["logits"] - ref).abs().max() <= 1e-5, encoding
        assert got["infill"] == generate(ckpt, TEXT, max_new_tokens=4), encoding
        assert got["continue"] == generate(ckpt, NO_BLANK, max_new_tokens=4), encoding
        assert not got["continue"].startswith(NO_BLANK)
        back = import_hf(outs[encoding], tmp_path / f"back-{encoding}")
        assert load_model(back).config == loaded.config
