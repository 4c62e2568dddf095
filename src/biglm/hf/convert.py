"""Conversion between biglm checkpoints and transformers folders.

- ``export_hf(ckpt, out)``: causal and bidirectional-ar checkpoints → a causal LM folder (see
  ``biglm.hf.causal``); masked ones (or a run folder's newest) → a transformers folder: ``config.json``
  (model type ``biglm``, ``auto_map`` to the remote code, ``biglm_format_version``), ``model.safetensors``,
  the tokenizer, ``configuration_biglm.py`` and ``modeling_biglm.py``. It loads with
  ``AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True)`` without biglm installed.
- ``import_hf(folder, out)``: such a folder (or one re-saved by transformers, or a causal LM folder
  biglm exported) → a biglm checkpoint.
- ``import_llama(folder, out)``: a Llama-layout causal model (e.g. SmolLM-135M, the ``biglm-136m``
  shape) → a bidirectional biglm checkpoint ready for continued masked-LM pretraining. Tokens the
  tokenizer lacks ([MASK], and [BOS]/[EOS]/[PAD] when absent) are added; the vocabulary is padded to
  a multiple of 64 counting them; every new row (added tokens and padding) of the embedding, and of
  an untied LM head, starts as the mean of the existing rows; weights are stored in float32.
- ``push_to_hub(folder, repo)``: upload an exported folder as it is (one commit).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from biglm.checkpoint import (
    MODEL_FORMAT_VERSION,
    check_state_dict,
    load_model,
    model_state_dict,
    resolve_checkpoint,
    verify_model,
    write_checkpoint,
)
from biglm.config import PRESETS, ModelConfig
from biglm.data.tokenizer import ensure_special_tokens, glm_token_ids
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.files import install_folder, new_temp_folder
from biglm.hf.causal import loading_code, suppressed_ids, write_causal_lm
from biglm.hf.common import AUTO_MAP, REMOTE_CODE, WEIGHTS, hf_config
from biglm.loaders import load_pickle, load_tokenizer_folder
from biglm.model import BiGLM
from biglm.outputs import CHECKPOINT, HF_FOLDER, check_output
from biglm.sizes import WeightsSize, check_memory, check_parameters, weights_size
from biglm.textio import parse_json

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def model_config(raw: dict[str, Any], where: Path | str) -> ModelConfig:
    """The ``ModelConfig`` of a BiGLM ``config.json`` dict; refuses newer biglm format versions."""
    version = raw.get("biglm_format_version", 0)
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise BiglmError(f"{where}: biglm_format_version {version} is newer than this biglm understands "
                         f"({MODEL_FORMAT_VERSION}); upgrade biglm")
    try:
        return ModelConfig.from_dict({k: raw[k] for k in MODEL_FIELDS if k in raw})
    except BiglmError as e:
        raise BiglmError(f"{where}: {e}") from None


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """biglm → ``BiGLMForMaskedLM`` names (the same: Llama's); a tied head is stored once (the embedding)."""
    out = {k: v.contiguous() for k, v in state.items() if "rotary" not in k}
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``BiGLMForMaskedLM`` / ``BiGLMModel`` / Llama names → biglm names (``model.`` prefix added for a
    bare backbone); rotary buffers and a tied head are dropped."""
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    return to_hf_state_dict(state, config)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, with a one-line error naming it when it is missing, cut short or damaged."""
    if not path.is_file():
        raise BiglmError(f"{path}: missing")
    if path.suffix == ".bin":
        state = load_pickle(path)
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise BiglmError(f"{path}: not a state dict (a mapping of names to tensors)")
        return state
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, zip/unpickling errors: all one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BiglmError(f"{path}: cannot be read, truncated or damaged ({msg[:160]})") from None


def weight_files(folder: Path) -> list[Path]:
    """The weights files of a transformers folder: ``model.safetensors`` (or its shards) or ``pytorch_model.bin``."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(s, str) and s and not s.startswith("/") and ".." not in s.split("/")
                for s in weight_map.values()):
            raise BiglmError(f"{index}: no 'weight_map' object of file names in this folder")
        return [folder / shard for shard in sorted(set(weight_map.values()))]
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise BiglmError(f"{folder}: no weights ({WEIGHTS}, {WEIGHTS}.index.json or pytorch_model.bin)")


def read_hf_weights(folder: Path, config: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a transformers folder (``weight_files``). With ``config``, first (from the safetensors
    headers alone) the config must fit the weights and the weights the memory available."""
    files = weight_files(folder)
    if config is not None:
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise BiglmError(f"{missing[0]}: missing")
        sizes = [weights_size(f) for f in files]
        held = WeightsSize(sum(z.parameters for z in sizes), sum(z.nbytes for z in sizes))
        check_parameters(config, held, f"{folder / 'config.json'}", f"{folder}'s weights")
        check_memory(held.nbytes, f"reading the weights of {folder}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(_read_tensors(path))
    return state


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with one-line errors for malformed content."""
    data = parse_json(path.read_bytes(), str(path), at_line=True)
    if not isinstance(data, dict):
        raise BiglmError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise BiglmError(f"{folder}: no such folder")
    if not (folder / "config.json").is_file():
        raise BiglmError(f"{folder}: not a transformers model folder (no config.json)")
    return _read_json(folder / "config.json")


def _load_tokenizer(path: Path) -> Any:
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    # Never run code shipped in an imported folder: the registered biglm classes describe it.
    return load_tokenizer_folder(path)


def _checked(state: dict[str, torch.Tensor], config: ModelConfig, where: Path) -> dict[str, torch.Tensor]:
    # The exact count before the model is built (a .bin file's header gives none beforehand).
    check_parameters(config, WeightsSize(sum(v.numel() for v in state.values()), 0), f"{where.parent / 'config.json'}",
                     str(where.parent))
    with torch.device("meta"):
        model = BiGLM(config)
    check_state_dict(state, model, where)
    return state


def export_hf(ckpt: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the checkpoint (or a run folder's newest one) at ``ckpt`` as a transformers folder ``out``:
    a masked LM (remote code, ``AutoModelForMaskedLM``) or, for causal and bidirectional-ar models, a
    causal LM (``AutoModelForCausalLM``; the Llama layout where it fits, see ``biglm.hf.causal``)."""
    folder = resolve_checkpoint(ckpt, check=verify_model)
    out = check_output(out, HF_FOLDER, [ckpt, folder], force=force)
    loaded = load_model(folder)
    tmp = new_temp_folder(out)
    EXPORTERS[get_family(loaded.config).export](loaded, tmp)
    install_folder(out)  # --force: the old folder goes only once the new one is whole
    return out


def _write_remote_code(loaded: Any, tmp: Path, readme: str, edit_config: Any = None) -> None:
    """Weights in transformers' names, the config (``edit_config(cfg)`` adjusts it), the remote code files,
    the tokenizer and a model card: the folder of every model exported with remote code."""
    state = to_hf_state_dict(model_state_dict(loaded.model), loaded.config)
    dtype = loaded.model.model.embed_tokens.weight.dtype
    cfg = hf_config(loaded.config, loaded.tokenizer, dtype, int(loaded.meta.get("step", 0)))
    if edit_config is not None:
        edit_config(cfg)
    cfg.save_pretrained(str(tmp))
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    for name in REMOTE_CODE:
        shutil.copyfile(Path(__file__).with_name(name), tmp / name)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(readme)


def _write_masked_lm(loaded: Any, tmp: Path) -> None:
    """A masked model: remote code ``BiGLMForMaskedLM``, with the ids biglm's decoding never emits in the config
    (``banned_token_ids``, read by ``generate_parallel``)."""
    def banned(cfg: Any) -> None:
        if loaded.tokenizer is not None:
            cfg.banned_token_ids = suppressed_ids(loaded.tokenizer, loaded.config.vocab_size)

    _write_remote_code(loaded, tmp, (
        f"---\nlibrary_name: transformers\ntags: [biglm, fill-mask]\n---\n# {loaded.config.name}\n\n"
        "A BiGLM (bidirectional general language model) exported by `biglm export-hf`.\n\n"
        "```python\n" + loading_code("AutoModelForMaskedLM", remote_code=True) +
        "out = model.generate_parallel(tokenizer=tokenizer, text='The cat', max_new_tokens=8, steps=4)\n"
        "print(out.texts[0])  # greedy Mask-Predict, as `biglm generate`\n```\n\n"
        "Pass `regions` (0 = prefix, 1 = suffix) for the prefix-blind attention of BiGLM. `generate_parallel` also "
        "takes `strategy` (`mask-predict`, `threshold`, `blocks`), `block_size`, `commit` (`threshold`, `factor`, "
        "`margin`), its value and `eos_exit`.\n"), banned)


def _write_glm(loaded: Any, tmp: Path) -> None:
    """A GLM model: remote code ``BiGLMForBlankInfilling`` (``AutoModelForSeq2SeqLM``, as GLM's own
    releases map it) with GLM's special ids in the config."""
    def glm_config(cfg: Any) -> None:
        cfg.glm_token_ids = glm_token_ids(loaded.tokenizer)
        cfg.auto_map = {"AutoConfig": AUTO_MAP["AutoConfig"], "AutoModel": AUTO_MAP["AutoModel"],
                        "AutoModelForSeq2SeqLM": "modeling_biglm.BiGLMForBlankInfilling"}
        cfg.architectures = ["BiGLMForBlankInfilling"]

    _write_remote_code(loaded, tmp, (
        f"---\nlibrary_name: transformers\ntags: [biglm, glm, blank-infilling]\n---\n# {loaded.config.name}\n\n"
        "A GLM (autoregressive blank infilling) exported by `biglm export-hf`.\n\n"
        "```python\n" + loading_code("AutoModelForSeq2SeqLM", remote_code=True) +
        "print(model.infill(tokenizer, 'The [MASK] sat on the mat.'))  # the text, its blanks filled\n"
        "print(model.infill(tokenizer, 'The cat sat'))  # no blank: the continuation\n```\n\n"
        "Rows are part A (text with [MASK]/[sMASK]/[gMASK] blanks) then part B ([sop] span per blank); pass "
        "`regions` (0 = A, 1 = B) and `position_ids` (B, T, 2): (position in A or the blank's, position in "
        "the span).\n"), glm_config)


EXPORTERS: dict[str, Callable[[Any, Path], None]] = {
    "masked-lm": _write_masked_lm,
    "causal-lm": write_causal_lm,
    "blank-infilling": _write_glm,
}
"""``Family.export`` -> the writer of that kind of transformers folder (into an empty temporary folder)."""


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder to the Hub repository ``repo_id`` (created if needed); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload BiGLM exported by biglm export-hf")
    except Exception as e:  # network, auth, naming: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BiglmError(f"push to hub repository '{repo_id}' failed: {msg}") from None
    return f"https://huggingface.co/{repo_id}"


def import_hf(folder: str | Path, out: str | Path, force: bool = False) -> Path:
    """Convert a BiGLM transformers folder (``export_hf``'s output, possibly re-saved) to a checkpoint."""
    folder, out = Path(folder), check_output(out, CHECKPOINT, [folder], force=force)
    raw = _read_config(folder)
    kind = raw.get("model_type")
    if kind == "llama" and raw.get("biglm_family"):  # a causal / bidirectional-ar model biglm exported
        config = dataclasses.replace(llama_config(raw, folder / "config.json"), family=raw["biglm_family"],
                                     name=str(raw.get("biglm_name", "custom")))
    elif kind != "biglm":
        hint = " (start from a Llama model with --from-llama)" if kind == "llama" else ""
        raise BiglmError(f"{folder}/config.json: model_type {kind!r} is not 'biglm'{hint}")
    else:
        config = model_config(raw, folder / "config.json")
    state = _checked(from_hf_state_dict(read_hf_weights(folder, config), config), config, folder / WEIGHTS)
    tokenizer = _load_tokenizer(folder)
    return write_checkpoint(out, state, config, tokenizer, step=int(raw.get("biglm_step", 0)),
                            meta={"imported_from": str(folder)})


def llama_config(raw: dict[str, Any], where: Path | str) -> ModelConfig:
    """The ``ModelConfig`` of a Llama ``config.json`` dict (vocabulary unpadded); one-line errors for
    what biglm does not have (RoPE scaling, biases, other activations, a free head size)."""
    if raw.get("model_type") != "llama":
        raise BiglmError(f"{where}: model_type {raw.get('model_type')!r} is not 'llama'")
    rope = dict(raw.get("rope_parameters") or {})
    if raw.get("rope_scaling"):
        raise BiglmError(f"{where}: rope_scaling {raw['rope_scaling']} is not supported "
                         "(biglm has plain RoPE)")
    if rope.get("rope_type", "default") != "default":
        raise BiglmError(f"{where}: rope_parameters {rope} is not supported (biglm has plain RoPE)")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise BiglmError(f"{where}: {key}=true is not supported (biglm projections have no bias)")
    if raw.get("hidden_act", "silu") != "silu":
        raise BiglmError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported "
                         "(biglm uses SwiGLU with silu)")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not isinstance(raw.get(key), int):
            raise BiglmError(f"{where}: missing or non-integer '{key}'")
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if raw.get("head_dim") not in (None, hidden // heads):
        raise BiglmError(f"{where}: head_dim {raw['head_dim']} != hidden_size/num_attention_heads "
                         f"({hidden // heads}) is not supported")
    try:
        return _llama_model_config(raw, hidden, heads, rope)
    except BiglmError as e:
        raise BiglmError(f"{where}: {e}") from None


def _llama_model_config(raw: dict[str, Any], hidden: int, heads: int, rope: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        name="custom", vocab_size=raw["vocab_size"], hidden_size=hidden, num_layers=raw["num_hidden_layers"],
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        intermediate_size=raw["intermediate_size"], max_seq_len=raw.get("max_position_embeddings", 2048),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rotary_fraction=float(raw.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))),
        norm="rmsnorm", norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        init_std=float(raw.get("initializer_range", 0.02)), dropout=float(raw.get("attention_dropout", 0.0) or 0.0))


def named_like_preset(config: ModelConfig) -> ModelConfig:
    """``config`` named after the preset it equals in every other field (SmolLM-135M → ``biglm-136m``)."""
    for preset in PRESETS.values():
        if dataclasses.replace(config, name=preset.name) == preset:
            return dataclasses.replace(preset)
    return config


def _pad_rows(weight: torch.Tensor, rows: int, keep: int) -> torch.Tensor:
    """``weight`` grown to ``rows`` rows; rows from ``keep`` on are the mean of rows ``[0, keep)``."""
    out = torch.empty(rows, weight.shape[1], dtype=torch.float32)
    out[:keep] = weight[:keep].float()
    out[keep:] = weight[:keep].float().mean(0)
    return out


def import_llama(folder: str | Path, out: str | Path, tokenizer: str | Path | None = None,
                 force: bool = False) -> Path:
    """Start a BiGLM from a Llama-layout causal model folder (weights and, unless given, tokenizer)."""
    folder, out = Path(folder), check_output(out, CHECKPOINT, [folder, tokenizer], force=force)
    config = llama_config(_read_config(folder), folder / "config.json")
    tok = _load_tokenizer(Path(tokenizer) if tokenizer else folder)
    if tok is None:
        raise BiglmError(f"{Path(tokenizer) if tokenizer else folder}: no tokenizer (tokenizer.json or "
                         "tokenizer_config.json); pass --tokenizer PATH")
    known = len(tok)
    added = ensure_special_tokens(tok)
    state = {k: v for k, v in read_hf_weights(folder, config).items() if not k.endswith("rotary_emb.inv_freq")}
    state = _checked(from_hf_state_dict(state, config), config, folder / WEIGHTS)
    rows = -(-max(len(tok), config.vocab_size) // 64) * 64
    keep = min(known, config.vocab_size)
    state = {k: v.float() for k, v in state.items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            state[name] = _pad_rows(state[name], rows, keep)
    config = named_like_preset(dataclasses.replace(config, vocab_size=rows))
    return write_checkpoint(out, _checked(state, config, folder / WEIGHTS), config, tok,
                            meta={"imported_from": str(folder), "from_llama": True, "added_tokens": added,
                                  "new_rows_init": f"mean of rows [0, {keep})"})
