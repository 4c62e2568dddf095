"""Export of ``causal`` and ``bidirectional-ar`` checkpoints as standard transformers causal LMs.

- **Llama layout** (RMSNorm and RoPE on every head dimension, the default): ``config.json`` of model
  type ``llama`` and ``LlamaForCausalLM``'s weight names (biglm already uses them). Any tool that reads
  Llama checkpoints (transformers without remote code, vLLM, llama.cpp converters) loads it.
- **Otherwise** (LayerNorm, partial rotary, a 2D position encoding): model type ``biglm`` with remote code,
  ``AutoModelForCausalLM`` → ``BiGLMForCausalLM`` (``trust_remote_code=True``).

Both write ``generation_config.json`` with BOS/EOS/PAD and ``suppress_tokens`` (the ids biglm's own
decoding never emits: [MASK], BOS, PAD, the vocabulary's padding rows), so ``generate()`` gives the
text ``biglm generate`` gives. ``config.json`` also records ``biglm_family``, ``biglm_format_version``
and ``biglm_step``; ``biglm import-hf`` reads such a folder back exactly.

Right to left (bidirectional-ar): the exported model is the same decoder; feed ``EOS`` + the ending's
ids reversed, stop at BOS, reverse the output (the README written beside the weights shows how).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from biglm.checkpoint import MODEL_FORMAT_VERSION, LoadedModel, model_state_dict
from biglm.config import ModelConfig
from biglm.families import get_family
from biglm.generate.specials import banned_ids
from biglm.hf.common import REMOTE_CODE, WEIGHTS, hf_config


def loading_code(auto_class: str, remote_code: bool) -> str:
    """The model card's lines that load the model and its tokenizer from ``PATH``. Both loads pass
    ``trust_remote_code=True`` when the folder ships remote code: the tokenizer reads ``config.json`` too,
    and without the flag transformers stops at an interactive "run the custom code?" prompt."""
    trust = ", trust_remote_code=True" if remote_code else ""
    return (f"from transformers import {auto_class}, AutoTokenizer\n"
            f"model = {auto_class}.from_pretrained(PATH{trust})\n"
            f"tokenizer = AutoTokenizer.from_pretrained(PATH{trust})\n")


def llama_compatible(config: ModelConfig) -> bool:
    """True when transformers' Llama computes exactly this network (RMSNorm, plain RoPE on every head dimension,
    no length head): GLM's 2D position encodings (``rope-2d``, ``learned-2d``) are no Llama."""
    return (config.norm == "rmsnorm" and config.position_encoding == "rope" and config.rotary_dim == config.head_dim
            and not config.length_head)


def _special(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None) if tokenizer is not None else None
    return int(value) if value is not None else None


def llama_config_dict(config: ModelConfig, tokenizer: Any, dtype: torch.dtype, step: int) -> dict[str, Any]:
    """``config.json`` of the Llama layout for ``config``."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
        "torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": _special(tokenizer, "bos"), "eos_token_id": _special(tokenizer, "eos"),
        "pad_token_id": _special(tokenizer, "pad"),
        "biglm_family": config.family, "biglm_format_version": MODEL_FORMAT_VERSION, "biglm_step": step,
        "biglm_name": config.name,
    }


def suppressed_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """What biglm's decoding bans: [MASK], BOS, PAD (unless EOS) and the vocabulary's padding rows."""
    if tokenizer is None:
        return []
    return banned_ids(tokenizer, vocab_size)


def write_causal_lm(loaded: LoadedModel, folder: Path) -> None:
    """Write ``loaded`` (a causal or bidirectional-ar model) into the (empty) ``folder``."""
    config, tok = loaded.config, loaded.tokenizer
    state = {k: v for k, v in model_state_dict(loaded.model).items() if "rotary" not in k}
    dtype = loaded.model.model.embed_tokens.weight.dtype
    step = int(loaded.meta.get("step", 0))
    if llama_compatible(config):
        raw = llama_config_dict(config, tok, dtype, step)
        (folder / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        remote_code = False
    else:
        cfg = hf_config(config, tok, dtype, step)
        cfg.auto_map = {"AutoConfig": "configuration_biglm.BiGLMConfig",
                        "AutoModelForCausalLM": "modeling_biglm.BiGLMForCausalLM"}
        cfg.architectures = ["BiGLMForCausalLM"]
        cfg.save_pretrained(str(folder))
        for name in REMOTE_CODE:
            (folder / name).write_bytes(Path(__file__).with_name(name).read_bytes())
        remote_code = True
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    generation = {"bos_token_id": _special(tok, "bos"), "eos_token_id": _special(tok, "eos"),
                  "pad_token_id": _special(tok, "pad"),
                  "suppress_tokens": suppressed_ids(tok, config.vocab_size) or None}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tok is not None:
        tok.save_pretrained(str(folder))
    (folder / "README.md").write_text(_readme(config, loading_code("AutoModelForCausalLM", remote_code)))


def _readme(config: ModelConfig, load: str) -> str:
    """The model card; its Python blocks run as written once ``PATH`` names the folder (tested)."""
    r2l = ""
    if "r2l" in get_family(config).directions:
        r2l = ("\nIt was trained left to right *and* right to left (BatGPT's bidirectional autoregressive "
               "objective). To write the text that comes before an ending, feed EOS and the ending's ids "
               "reversed, stop at BOS, and reverse what comes out:\n\n```python\n"
               "ending = 'on the mat.'\n"
               "ids = tokenizer(ending, add_special_tokens=False).input_ids\n"
               "x = torch.tensor([[tokenizer.eos_token_id, *reversed(ids)]])\n"
               "out = model.generate(x, max_new_tokens=40, eos_token_id=tokenizer.bos_token_id,\n"
               "                     suppress_tokens=[tokenizer.mask_token_id])[0, x.shape[1]:].tolist()\n"
               "before = tokenizer.decode([t for t in reversed(out) if t != tokenizer.bos_token_id])\n```\n")
    return (f"---\nlibrary_name: transformers\ntags: [biglm, text-generation, {config.family}]\n---\n"
            f"# {config.name}\n\nA {config.family} language model exported by `biglm export-hf`.\n\n"
            "```python\nimport torch\n" + load +
            "x = tokenizer('The cat', return_tensors='pt', add_special_tokens=False).input_ids\n"
            "x = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), x], 1)  # biglm starts every text with BOS\n"
            "print(tokenizer.decode(model.generate(x, max_new_tokens=40)[0, x.shape[1]:]))\n```\n" + r2l)
