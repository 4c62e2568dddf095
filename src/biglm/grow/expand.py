"""Growing a trained model: width by function-preserving initialisation, depth by stacking layers.

**Width (FPI, bert2BERT / Net2Net, BatGPT §3.4 eq. 5–7).** Every widened dimension gets a mapping
``g`` from new units to source units (``g(i) = i`` for the old ones) and the counts
``C(j) = |g⁻¹(j)|``. A weight's axis is either a *copy* axis (a new unit repeats its source:
``W'[i] = W[g(i)]``) or a *split* axis (the source's outgoing weights are shared out among its copies:
``W'[i] = W[g(i)] / C(g(i))``). With the residual stream copied (embedding, norm weights, every
projection's output rows over the hidden size) and every projection that reads it split, linear maps
and SwiGLU give exactly the source's function. Attention widens **head-wise**: new heads copy whole
heads (same head size, so the same 1/√d scale and RoPE), ``q/k/v`` rows copy, ``o_proj`` columns split;
under grouped-query attention the key/value heads are mapped first and each new group copies a whole
source group, so every query head keeps the key/value head it was trained with.

What normalisation and tied embeddings allow:

- RMSNorm / LayerNorm statistics over the copied stream equal the source's **only when every unit
  has the same number of copies** (hidden size a whole multiple of the source's, with the default
  ``balanced`` mapping): then ``mean(x'²) = mean(x²)`` exactly. Any other ratio (or the paper's
  ``random`` mapping, uniform draws with replacement) changes them: the function is approximate, and
  ``expand`` reports by how much (max |Δlogits|).
- A tied head would read the copied stream with the copied embedding and multiply every logit by C.
  The 1/C is folded into the final norm's weight (and bias) instead — the final norm is a split axis —
  so the tied (or untied) head and the length head read it with plain copies: exact.
- Heads, key/value groups and SwiGLU units may grow by any amount: exact (no norm reads them).

``noise`` adds symmetry-breaking noise of that relative size to every split weight, drawn to sum to
zero over the copies of each source unit: copies start different, yet (their inputs being equal) the
function is still exact.

**Depth (progressive stacking, StackBERT / BatGPT Algorithm 1).** New layer ``j`` copies a source layer:
``stack`` puts a copy of the whole stack on top (layer j ← j mod L), ``interleave`` repeats each layer
in place (j ← ⌊j·L/L'⌋). ``depth_init='copy'`` keeps the copies as they are (progressive stacking: not
function preserving, reported); ``'zero'`` zeroes the new layers' output projections (``o_proj``,
``down_proj``), so each new block adds nothing to the residual stream: exact.

The same maps expand AdamW's moments when a training run grows (``expand_optimizer_state``): a
gradient is scaled by 1/C on *copy* axes (the copies share the source's gradient) and unchanged on
split axes, so ``exp_avg`` takes that factor and ``exp_avg_sq`` its square.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from biglm.config import ModelConfig
from biglm.errors import BiglmError, check

Space = Literal["hidden", "q", "kv", "inter"]
# Per parameter (after the layer prefix): for each tensor axis, (space, "copy" | "split") or None.
LAYER_RULES: dict[str, tuple[tuple[str, str] | None, ...]] = {
    "input_layernorm.weight": (("hidden", "copy"),),
    "input_layernorm.bias": (("hidden", "copy"),),
    "post_attention_layernorm.weight": (("hidden", "copy"),),
    "post_attention_layernorm.bias": (("hidden", "copy"),),
    "self_attn.q_proj.weight": (("q", "copy"), ("hidden", "split")),
    "self_attn.k_proj.weight": (("kv", "copy"), ("hidden", "split")),
    "self_attn.v_proj.weight": (("kv", "copy"), ("hidden", "split")),
    "self_attn.o_proj.weight": (("hidden", "copy"), ("q", "split")),
    "mlp.gate_proj.weight": (("inter", "copy"), ("hidden", "split")),
    "mlp.up_proj.weight": (("inter", "copy"), ("hidden", "split")),
    "mlp.down_proj.weight": (("hidden", "copy"), ("inter", "split")),
}
GLOBAL_RULES: dict[str, tuple[tuple[str, str] | None, ...]] = {
    "model.embed_tokens.weight": (None, ("hidden", "copy")),
    "model.norm.weight": (("hidden", "split"),),  # carries the 1/C of the head (see the module docstring)
    "model.norm.bias": (("hidden", "split"),),
    "lm_head.weight": (None, ("hidden", "copy")),
    "length_head.weight": (None, ("hidden", "copy")),
    "length_head.bias": (None,),
    "span_head.weight": (None, ("hidden", "copy")),
    "span_head.bias": (None,),
    "reward_head.weight": (None, ("hidden", "copy")),
    "reward_head.bias": (None,),
    "model.position_embeddings.weight": (None, ("hidden", "copy")),  # GLM's learned 2D positions
    "model.block_position_embeddings.weight": (None, ("hidden", "copy")),
}
"""Other model kinds register the roles of their extra parameters here (e.g. learned position tables:
``(None, ("hidden", "copy"))``); a parameter without a rule is an error, never silently copied."""
ZEROED_IN_NEW_LAYERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass
class ExpandSpec:
    """Target sizes (None: unchanged) and how to fill them."""

    hidden_size: int | None = None
    num_layers: int | None = None
    intermediate_size: int | None = None
    """Default: scaled with the hidden size (rounded)."""
    num_heads: int | None = None
    """Default: hidden_size / head_dim (the head size never changes)."""
    num_kv_heads: int | None = None
    """Default: num_heads / the source's group size (grouped-query attention keeps its groups)."""
    mapping: Literal["balanced", "random"] = "balanced"
    """balanced: every source unit copied as evenly as possible (exact for whole multiples); random: the
    paper's uniform draws with replacement."""
    depth_order: Literal["stack", "interleave"] = "stack"
    depth_init: Literal["copy", "zero"] = "copy"
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.mapping in ("balanced", "random"), f"expand mapping={self.mapping!r}: balanced or random",
              BiglmError)
        check(self.depth_order in ("stack", "interleave"),
              f"expand depth_order={self.depth_order!r}: stack or interleave", BiglmError)
        check(self.depth_init in ("copy", "zero"), f"expand depth_init={self.depth_init!r}: copy or zero", BiglmError)
        check(self.noise >= 0, f"expand noise={self.noise}: must be >= 0", BiglmError)


@dataclass
class Plan:
    """The index maps of one expansion (drawn once; weights and optimizer moments share them)."""

    source: ModelConfig
    target: ModelConfig
    maps: dict[str, Tensor]  # space -> (new units,) source unit index
    counts: dict[str, Tensor]  # space -> (new units,) copies of each new unit's source
    layers: list[int]  # new layer -> source layer
    new_layer: list[bool]  # whether a layer is an added copy (zeroed under depth_init='zero')
    spec: ExpandSpec

    @property
    def exact(self) -> bool:
        """Whether the expanded model computes exactly the source's function (to float rounding)."""
        hidden = self.counts["hidden"]
        uniform = bool((hidden == hidden[0]).all())
        depth_exact = self.spec.depth_init == "zero" or self.target.num_layers == self.source.num_layers
        return uniform and depth_exact


def target_config(config: ModelConfig, spec: ExpandSpec) -> ModelConfig:
    """The expanded model's config; one-line errors for shapes that cannot grow from ``config``."""
    d, group = config.head_dim, config.num_heads // config.num_kv_heads
    hidden = spec.hidden_size or config.hidden_size
    check(hidden >= config.hidden_size, f"expand hidden_size={hidden}: must be >= {config.hidden_size}", BiglmError)
    check(hidden % d == 0, f"expand hidden_size={hidden}: must be a multiple of the head size {d} "
          "(attention grows head-wise)", BiglmError)
    heads = spec.num_heads or hidden // d
    check(heads * d == hidden, f"expand num_heads={heads}: with head size {d} the hidden size would be "
          f"{heads * d}, not {hidden}", BiglmError)
    kv = spec.num_kv_heads or heads // group
    check(kv * group == heads and kv >= config.num_kv_heads,
          f"expand num_kv_heads={kv}: must be num_heads / {group} = {heads / group:g} (the source's query heads "
          f"per key/value head) and >= {config.num_kv_heads}", BiglmError)
    inter = spec.intermediate_size or round(config.intermediate_size * hidden / config.hidden_size)
    check(inter >= config.intermediate_size,
          f"expand intermediate_size={inter}: must be >= {config.intermediate_size}", BiglmError)
    layers = spec.num_layers or config.num_layers
    check(layers >= config.num_layers, f"expand num_layers={layers}: must be >= {config.num_layers}", BiglmError)
    return dataclasses.replace(config, hidden_size=hidden, num_heads=heads, num_kv_heads=kv,
                               intermediate_size=inter, num_layers=layers)


def _unit_map(old: int, new: int, mapping: str, g: torch.Generator) -> Tensor:
    extra = new - old
    if mapping == "random":
        tail = torch.randint(0, old, (extra,), generator=g)
    else:
        rounds = -(-extra // old) if extra else 0
        perms = [torch.randperm(old, generator=g) for _ in range(rounds)]
        tail = torch.cat(perms)[:extra] if perms else torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(old), tail])


def make_plan(config: ModelConfig, spec: ExpandSpec) -> Plan:
    """Draw the index maps for expanding ``config`` as ``spec`` says."""
    target = target_config(config, spec)
    g = torch.Generator().manual_seed(spec.seed)
    d, group = config.head_dim, config.num_heads // config.num_kv_heads
    hidden = _unit_map(config.hidden_size, target.hidden_size, spec.mapping, g)
    kv_heads = _unit_map(config.num_kv_heads, target.num_kv_heads, spec.mapping, g)
    q_heads = (kv_heads[:, None] * group + torch.arange(group)).flatten()  # whole groups follow their kv head
    inter = _unit_map(config.intermediate_size, target.intermediate_size, spec.mapping, g)
    head_units = lambda heads: (heads[:, None] * d + torch.arange(d)).flatten()
    maps = {"hidden": hidden, "q": head_units(q_heads), "kv": head_units(kv_heads), "inter": inter}
    counts = {k: torch.bincount(m)[m] for k, m in maps.items()}
    L, L2 = config.num_layers, target.num_layers
    layers = [j % L for j in range(L2)] if spec.depth_order == "stack" else [j * L // L2 for j in range(L2)]
    seen: set[int] = set()
    new_layer = []
    for src in layers:
        new_layer.append(src in seen)
        seen.add(src)
    return Plan(config, target, maps, counts, layers, new_layer, spec)


def _rules(name: str) -> tuple[tuple[str, str] | None, ...]:
    m = _LAYER.match(name)
    rule = LAYER_RULES.get(m.group(2)) if m else GLOBAL_RULES.get(name)
    if rule is None:
        raise BiglmError(f"expand: no rule for parameter '{name}' (add its axes to biglm.grow.expand rules)")
    return rule


def _expand_tensor(t: Tensor, rule: tuple[tuple[str, str] | None, ...], plan: Plan, kind: str,
                   noise: float, g: torch.Generator | None) -> Tensor:
    """One tensor through the maps: ``kind='weight'`` divides split axes by C, ``'grad'`` copy axes,
    ``'grad2'`` copy axes by C² (second moments)."""
    out = t.float()
    split_axes = []
    for axis, role in enumerate(rule):
        if role is None:
            continue
        space, mode = role
        index, count = plan.maps[space], plan.counts[space].to(out.dtype)
        out = out.index_select(axis, index)
        scaled = (mode == "split") if kind == "weight" else (mode == "copy")
        if scaled:
            shape = [1] * out.dim()
            shape[axis] = -1
            out = out / (count if kind != "grad2" else count**2).view(shape)
        if mode == "split":
            split_axes.append((axis, space))
    if kind == "weight" and noise > 0 and g is not None and t.numel() > 1:
        scale = noise * float(t.float().std())
        for axis, space in split_axes:
            eps = torch.randn(out.shape, generator=g) * scale
            index = plan.maps[space]
            moved = eps.movedim(axis, 0)
            mean = torch.zeros((int(index.max()) + 1, *moved.shape[1:])).index_add_(0, index, moved)
            mean = mean / torch.bincount(index).to(mean.dtype).view(-1, *([1] * (moved.dim() - 1)))
            out = out + (moved - mean[index]).movedim(0, axis)  # zero sum over the copies of each unit
    return out.to(t.dtype)


def expand_state(state: dict[str, Tensor], plan: Plan, kind: str = "weight") -> dict[str, Tensor]:
    """A state dict (weights, or AdamW moments with ``kind='grad'`` / ``'grad2'``; tied head left out)
    of the source model, expanded to ``plan.target``."""
    g = torch.Generator().manual_seed(plan.spec.seed + 1) if kind == "weight" else None
    noise = plan.spec.noise if kind == "weight" else 0.0
    widened = {name: _expand_tensor(t, _rules(name), plan, kind, noise, g) if t.dim() else t.clone()
               for name, t in state.items()}
    out = {}
    for name, t in widened.items():
        m = _LAYER.match(name)
        if not m:
            out[name] = t
    for j, (src, new) in enumerate(zip(plan.layers, plan.new_layer)):
        for name, t in widened.items():
            m = _LAYER.match(name)
            if m and int(m.group(1)) == src:
                zero = new and plan.spec.depth_init == "zero" and m.group(2) in ZEROED_IN_NEW_LAYERS
                out[f"model.layers.{j}.{m.group(2)}"] = torch.zeros_like(t) if zero else t.clone()
    return out


def expand_optimizer_state(optim_state: dict, plan: Plan) -> dict:
    """AdamW state keyed by parameter name (``get_optimizer_state_dict`` form) for the expanded model."""
    state = optim_state.get("state", {})
    names = {n for n in state}
    moments: dict[str, dict[str, Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    steps = {}
    for n in names:
        for key in moments:
            if key in state[n]:
                moments[key][n] = state[n][key]
        steps[n] = state[n].get("step")
    grown = {"exp_avg": expand_state(moments["exp_avg"], plan, "grad"),
             "exp_avg_sq": expand_state(moments["exp_avg_sq"], plan, "grad2")}
    new_state = {}
    for n in grown["exp_avg"]:
        m = _LAYER.match(n)
        src = f"model.layers.{plan.layers[int(m.group(1))]}.{m.group(2)}" if m else n
        entry = {k: grown[k][n] for k in grown if n in grown[k]}
        if steps.get(src) is not None:
            entry["step"] = steps[src].clone()
        new_state[n] = entry
    return {"state": new_state, "param_groups": _param_groups(optim_state.get("param_groups", []), plan)}


def _param_groups(groups: list[dict], plan: Plan) -> list[dict]:
    """Parameter groups with the new layers' parameter names added next to their source's."""
    out = []
    for group in groups:
        params = []
        for name in group.get("params", []):
            m = _LAYER.match(str(name))
            if not m:
                params.append(name)
                continue
            params += [f"model.layers.{j}.{m.group(2)}" for j, src in enumerate(plan.layers) if src == int(m.group(1))]
        out.append({**group, "params": params})
    return out


__all__ = ["GLOBAL_RULES", "LAYER_RULES", "ExpandSpec", "Plan", "expand_optimizer_state", "expand_state",
           "make_plan", "target_config"]
