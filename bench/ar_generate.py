"""Autoregressive generation with the KV cache: biglm against transformers' ``generate()`` on the same weights.

biglm's causal model and a ``LlamaForCausalLM`` holding the same weights (the names are Llama's) decode
greedily exactly ``--new`` tokens after prompts of ``--prompt`` tokens (``min_new_tokens`` = ``max_new_tokens``),
with the KV cache, at batch 1 and 8, for the ``tiny`` and ``biglm-136m`` shapes. Reported: generated tokens
per second (best of interleaved repeats) and whether both produced the same tokens. Also biglm's beam search
(4 beams) for scale.

    python bench/ar_generate.py          # tiny and 136M shapes, batch 1 and 8
    python bench/ar_generate.py --quick  # tiny only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
from pathlib import Path
from typing import Any

import torch

from biglm import BiGLM, ModelConfig
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from common import best_of, generation_args, machine_info, tokens_per_second

RESULTS = Path(__file__).parent / "results" / "ar_generate.json"
PAD, BOS, EOS = 0, 1, 2


def models(shape: str) -> tuple[BiGLM, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ours = BiGLM(ModelConfig.from_preset(shape, max_seq_len=2048, family="causal")).eval()
    c = ours.config
    hf = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                     num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                     num_key_value_heads=c.num_kv_heads, max_position_embeddings=2048, rms_norm_eps=c.norm_eps,
                     rope_theta=c.rope_theta, tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS,
                     pad_token_id=PAD)
    hf._attn_implementation = "sdpa"
    llama = LlamaForCausalLM(hf).eval()
    state = {k: v for k, v in ours.state_dict().items() if "rotary" not in k}
    llama.load_state_dict(state, strict=False)
    llama.tie_weights()
    return ours, llama


def bench(shape: str, batches: list[int], prompt: int, new: int, repeats: int) -> list[dict[str, Any]]:
    ours, llama = models(shape)
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(8, ours.config.vocab_size - 64, (batch, prompt), generator=g).tolist()
        ids = torch.tensor([[BOS, *p] for p in prompts])
        forced = AROptions(max_new_tokens=new, min_new_tokens=new)

        def biglm_greedy(prompts=prompts, forced=forced) -> list[list[int]]:
            return generate_ar_ids(ours, prompts, bos_token_id=BOS, eos_token_id=EOS, options=forced).token_ids

        def biglm_beam(prompts=prompts) -> list[list[int]]:
            opts = AROptions(max_new_tokens=new, min_new_tokens=new, num_beams=4)
            return generate_ar_ids(ours, prompts, bos_token_id=BOS, eos_token_id=EOS, options=opts).token_ids

        def hf_greedy(ids=ids) -> list[list[int]]:
            with torch.inference_mode():
                out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=PAD)
            return out[:, ids.shape[1]:].tolist()

        fns = {"biglm": biglm_greedy, "transformers": hf_greedy}
        if batch == 1:
            fns["biglm_beam4"] = biglm_beam
        timing = best_of(fns, repeats)
        row = {"shape": shape, "batch": batch, "prompt": prompt, "new": new,
               "same_tokens": timing["biglm"][1] == timing["transformers"][1]}
        rows.append(tokens_per_second(row, timing, batch * new, "biglm"))
        print(f"  {shape:<11} batch {batch:2d}: biglm {row['biglm_tok_s']:8.1f} tok/s, transformers "
              f"{row['transformers_tok_s']:8.1f} tok/s ({row['speedup']:.2f}×), same tokens {row['same_tokens']}",
              flush=True)
    return rows


def main() -> None:
    args = generation_args(__doc__.splitlines()[0], RESULTS)
    shapes = ["tiny"] if args.quick else ["tiny", "biglm-136m"]
    rows = [r for s in shapes for r in bench(s, [1, 8], args.prompt, args.new, 2 if args.quick else 3)]
    print(f"\n{'shape':<11}{'batch':>6}{'biglm tok/s':>13}{'transformers tok/s':>20}{'biglm/HF':>10}"
          f"{'same tokens':>13}{'beam-4 tok/s':>14}")
    for r in rows:
        beam = f"{r['biglm_beam4_tok_s']:.1f}" if "biglm_beam4_tok_s" in r else ""
        print(f"{r['shape']:<11}{r['batch']:>6}{r['biglm_tok_s']:>13.1f}{r['transformers_tok_s']:>20.1f}"
              f"{r['speedup']:>9.2f}×{r['same_tokens']!s:>13}{beam:>14}")
    report = {**machine_info(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
