"""Cost of a decoding setting: forward passes per token, tokens/s and latency, against autoregressive peers.

At the demo shape the settings run on the trained masked model; at a larger shape (``biglm-136m``) on random
weights of that shape, each setting with the pass count the trained model needed (``Setting.even``: the same
strategy and cache mode, threshold 1.0 and T = that count, so it commits evenly; Mask-Predict as it is), since
the pass count is what transfers, not the random model's confidences. The peers, on the same prompts and
exactly ``new`` tokens each: transformers' ``LlamaForCausalLM.generate()`` of the same shape (greedy, KV cache,
sdpa; ``common.llama_like``) and biglm's own causal decoder (``biglm.generate.generate_ar_ids``, greedy, KV
cache): the trained causal model at the demo shape, a random one of the larger shape. Timings are the best of
interleaved repeats (``common.best_of``).

The limit analysis prices one pass of q suffix tokens against one autoregressive step: FLOPs
``2·N·q + 4·layers·hidden·q·c + 2·V·hidden·k`` (N the non-embedding parameters, c the tokens attended, k the
positions given logits) and bytes read ``4·(N + V·hidden) + 2·layers·kv_width·c·4`` (fp32 weights, the LM head
read once per pass, the keys and values attended), with the measured seconds of each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from biglm import BiGLM, ModelConfig
from biglm.generate import AROptions, encode_prefix, generate_ar_ids, generate_ids, suffix_logits
from common import best_of, llama_like


class Peers:
    """transformers' same-shape Llama and biglm's causal decoder, each generating exactly ``new`` tokens."""

    def __init__(self, config: ModelConfig, causal: nn.Module, ids: dict[str, int], banned: Sequence[int],
                 new: int) -> None:
        torch.manual_seed(0)
        self.llama = llama_like(config, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                                pad_token_id=ids["pad"]).eval()
        self.causal, self.ids, self.new = causal, ids, new
        self.options = AROptions(max_new_tokens=new, min_new_tokens=new, banned_token_ids=tuple(banned))

    def fns(self, prompts: list[list[int]]) -> dict[str, Callable[[], Any]]:
        ids = torch.tensor([[self.ids["bos"], *p] for p in prompts])  # prompts of one length: no padding

        def transformers() -> int:
            with torch.inference_mode():
                seq = self.llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.new,
                                          min_new_tokens=self.new, do_sample=False, use_cache=True,
                                          pad_token_id=self.ids["pad"])
            assert seq.shape[1] - ids.shape[1] == self.new
            return self.new  # passes: the prompt's (giving the first token), then one per later token

        def causal() -> int:
            out = generate_ar_ids(self.causal, prompts, bos_token_id=self.ids["bos"], eos_token_id=self.ids["eos"],
                                  pad_token_id=self.ids["pad"], options=self.options)
            assert all(len(t) == self.new for t in out.token_ids)
            return out.forward_passes

        return {"transformers generate()": transformers, "biglm causal (greedy)": causal}


def masked_fn(model: nn.Module, prompts: list[list[int]], ids: dict[str, int], banned: Sequence[int], new: int,
              kwargs: dict[str, Any]) -> Callable[[], int]:
    """A call generating ``new`` tokens after each prompt with ``kwargs``; returns the forward passes."""
    def run() -> int:
        out = generate_ids(model, prompts, bos_token_id=ids["bos"], eos_token_id=ids["eos"], mask_token_id=ids["mask"],
                           pad_token_id=ids["pad"], max_new_tokens=new, banned_token_ids=banned, **kwargs)
        return out.forward_passes
    return run


def timed_rows(shape: str, batch: int, fns: dict[str, Callable[[], int]], new: int, repeats: int
               ) -> list[dict[str, Any]]:
    """Latency, tokens/s and passes per token of each function (best of ``repeats`` interleaved runs, no warm-up
    round: the minimum drops a cold first run), with the speed-ups over transformers' generate() and biglm's
    causal decoder."""
    timing = best_of(fns, repeats, warmup=False)
    rows = []
    for name, (sec, passes) in timing.items():
        rows.append({"shape": shape, "batch": batch, "setting": name, "latency_s": sec,
                     "tok_s": batch * new / sec, "passes": passes, "passes_per_token": passes / new})
    peer = {r["setting"]: r["tok_s"] for r in rows}
    for r in rows:
        r["speedup_vs_generate"] = r["tok_s"] / peer["transformers generate()"]
        r["speedup_vs_causal"] = r["tok_s"] / peer["biglm causal (greedy)"]
    return rows


def random_models(shape: str) -> tuple[BiGLM, BiGLM, ModelConfig]:
    """Random masked and causal biglm models of a preset shape (speed only)."""
    config = ModelConfig.from_preset(shape)
    torch.manual_seed(0)
    masked = BiGLM(config).eval()
    causal = BiGLM(ModelConfig.from_preset(shape, family="causal")).eval()
    return masked, causal, config


def pass_seconds(model: BiGLM, prompts: list[list[int]], bos: int, mask: int, tokens: int, repeats: int) -> float:
    """Best time of one suffix pass of ``tokens`` [MASK]s after the cached prompts, logits at every position."""
    prefix = encode_prefix(model, [[bos, *p] for p in prompts])
    y = torch.full((len(prompts), tokens), mask)
    active = torch.ones_like(y, dtype=torch.bool)

    def one() -> None:
        with torch.inference_mode():
            suffix_logits(model, prefix, y, active, logits_mask=active)
    return best_of({"pass": one}, repeats)["pass"][0]


def limit_analysis(model: BiGLM, config: ModelConfig, prompts: list[list[int]], ids: dict[str, int], new: int,
                   ar_step_s: dict[str, float], repeats: int, sizes: Sequence[int] = (1, 8, 16, 32, 64)
                   ) -> dict[str, Any]:
    """FLOPs, bytes and measured seconds of one pass of q suffix tokens (q in ``sizes``) against one
    autoregressive step, at ``len(prompts)`` rows; and the passes per ``new`` tokens below which a q-token
    pass beats each peer by 2x."""
    h, layers, vocab = config.hidden_size, config.num_layers, config.vocab_size
    embedding = vocab * h
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    kv_width = 2 * config.num_kv_heads * (h // config.num_heads)
    prompt = len(prompts[0]) + 1
    batch = len(prompts)

    def price(q: int, context: float, logits: int) -> dict[str, float]:
        flops = batch * (2 * non_embedding * q + 4 * layers * h * q * context + 2 * vocab * h * logits)
        weights = 4 * (non_embedding + embedding)
        kv = batch * layers * kv_width * context * 4
        return {"flops": flops, "weight_bytes": weights, "kv_bytes": kv, "bytes": weights + kv,
                "flops_per_byte": flops / (weights + kv)}

    ar = price(1, prompt + new / 2, 1)  # the average step
    rows = []
    for q in sizes:
        sec = pass_seconds(model, prompts, ids["bos"], ids["mask"], q, repeats)
        row = {"tokens_per_pass": q, **price(q, prompt + new, q), "seconds": sec}
        for peer, step in ar_step_s.items():
            row[f"x_{peer}_step"] = sec / step
            # new tokens in P passes of this kind beat the peer 2x when P·sec <= new·step / 2
            row[f"max_passes_for_2x_{peer}"] = new * step / (2 * sec)
        rows.append(row)
    return {"rows": batch, "prompt_tokens": prompt, "new_tokens": new, "params_non_embedding": non_embedding,
            "params_embedding": embedding, "ar_step": {**ar, "seconds": ar_step_s}, "passes": rows}


def copy_timing(shape: str, batch: int, model: nn.Module, llama: nn.Module, sources: list[list[int]],
                answers: list[int], ids: dict[str, int], banned: Sequence[int], length: int,
                settings: dict[str, dict[str, Any]], repeats: int) -> list[dict[str, Any]]:
    """The copy task's decoding cost, where the answer is known: each setting decodes the ``sources`` ``batch`` at a
    time (L = ``length``, its own passes: EOS early exit where the setting has it), against transformers'
    ``generate()`` writing exactly each batch's longest answer and its EOS (the fewest steps an autoregressive
    model needs; ``answers``: the answers' token counts). Tokens/s counts the answers' tokens and EOS, the same for
    every row."""
    groups = [(sources[i:i + batch], max(answers[i:i + batch]) + 1) for i in range(0, len(sources), batch)]
    tokens = sum(a + 1 for a in answers)
    device = next(model.parameters()).device

    def transformers() -> int:
        steps = 0
        for group, new in groups:
            width = max(len(s) for s in group) + 1
            x = torch.full((len(group), width), ids["pad"], dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, s in enumerate(group):
                x[r, width - len(s) - 1:] = torch.tensor([ids["bos"], *s])
                mask[r, width - len(s) - 1:] = 1
            with torch.inference_mode():
                llama.generate(x.to(device), attention_mask=mask.to(device), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, use_cache=True, pad_token_id=ids["pad"])
            steps += new
        return steps

    def ours(kwargs: dict[str, Any]) -> Callable[[], int]:
        def run() -> int:
            return sum(generate_ids(model, group, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                                    mask_token_id=ids["mask"], pad_token_id=ids["pad"], max_new_tokens=length,
                                    banned_token_ids=banned, **kwargs).forward_passes for group, _ in groups)
        return run

    fns: dict[str, Callable[[], int]] = {"transformers generate()": transformers}
    fns.update({name: ours(kw) for name, kw in settings.items()})
    timing = best_of(fns, repeats)
    peer = timing["transformers generate()"][0]
    return [{"task": "copy", "shape": shape, "batch": batch, "setting": name, "kwargs": settings.get(name),
             "latency_s": sec / len(groups), "tok_s": tokens / sec, "passes_per_example": passes / len(sources),
             "speedup_vs_generate": peer / sec} for name, (sec, passes) in timing.items()]
