"""The model card ``biglm export-hf`` writes is runnable: every ```python block of the exported README, run as
written (``PATH`` = the folder) in a fresh process without biglm, offline, loads and uses the model without
stopping at transformers' interactive "run the custom code?" prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.hf.convert import export_hf
from test_hf import make_tokenizer, randomize

RUN_README = r"""
import builtins, re, sys

def no_prompt(prompt=""):  # a prompt would wait for a person: fail instead
    raise SystemExit("interactive prompt: " + str(prompt)[-300:])

builtins.input = no_prompt
for folder in sys.argv[1:]:
    text = open(folder + "/README.md").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, folder + ": no python block"
    scope = {"PATH": folder}
    for block in blocks:
        exec(compile(block, folder + "/README.md", "exec"), scope)
    print("README-OK", len(blocks), folder)
assert not [m for m in sys.modules if m.split(".")[0] == "biglm"]
"""

KINDS = {  # every kind of export: remote code (masked, glm, a causal model off the Llama layout), plain Llama
    "masked": {},
    "glm": {"family": "glm", "position_encoding": "rope-2d"},
    "causal-llama": {"family": "causal"},
    "bidirectional-ar-remote": {"family": "bidirectional-ar", "norm": "layernorm"},
}


def test_exported_readme_snippets_run(tmp_path: Path) -> None:
    outs = []
    for kind, overrides in KINDS.items():
        tok = make_tokenizer()
        if kind == "glm":
            ensure_glm_tokens(tok)
        config = ModelConfig.from_preset("micro", vocab_size=64, **overrides)
        model = BiGLM(config)
        randomize(model, 0)
        ckpt = write_checkpoint(tmp_path / kind, model_state_dict(model), config, tok, step=1)
        outs.append(str(export_hf(ckpt, tmp_path / f"hf-{kind}")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", RUN_README, *outs], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("README-OK") == len(KINDS)
