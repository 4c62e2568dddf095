"""The alignment methods as registry entries (``biglm.align.methods``): each method's config section, the
inputs it refuses to run without, the policy families it refuses, and a new method added as one record and
one registry line."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from biglm.align import AlignConfig, load_align_config, setup_align
from biglm.align.methods import METHODS, Method, get_method
from biglm.align.methods.base import PROMPTS, REWARD
from biglm.align.synthetic import REWARD as RULE
from biglm.align.synthetic import pretrain_policy, write_task
from biglm.errors import BiglmError, ConfigError
from test_dpo import policy

QUIET = ["--train.progress", "false", "--train.tensorboard", "false", "--train.device", "cpu"]


def test_every_method_is_a_registry_entry_with_its_config_section():
    assert list(METHODS) == ["ppo", "grpo", "dpo"]
    sections = {f.name for f in dataclasses.fields(AlignConfig)}
    for name, method in METHODS.items():
        assert get_method(name) is method and method.section in sections
    assert [m.name for m in METHODS.values() if not m.rollout] == ["dpo"]
    assert [m.name for m in METHODS.values() if m.value_head] == ["ppo"]
    with pytest.raises(ConfigError, match=r"^method='rloo': expected one of ppo, grpo, dpo$"):
        AlignConfig(method="rloo")


@pytest.mark.parametrize(("method", "drop", "message"), [
    ("ppo", "--data.prompts", "data.prompts: give the training prompts (--prompts FILE)"),
    ("grpo", "--reward", "reward: give a reward-model checkpoint or py:module:function (--reward)"),
    ("dpo", "--data.preferences", "data.preferences: method dpo needs judged pairs (--preferences FILE)"),
])
def test_a_missing_input_gets_the_methods_one_line_refusal(tmp_path, method, drop, message):
    given = {"--init": str(tmp_path / "no-policy"), "--reward": RULE, "--data.prompts": "prompts.jsonl",
             "--data.preferences": "pairs.jsonl"}
    args = [x for k, v in given.items() if k != drop for x in (k, v)]
    with pytest.raises(ConfigError) as e:  # refused before the (missing) policy is looked at
        setup_align(load_align_config(None, ["--method", method, *args, *QUIET]), tmp_path / "run")
    assert str(e.value) == message


def test_the_policy_families_a_method_refuses(tmp_path):
    def refusal(method: str, family: str) -> str:
        init = policy(tmp_path / family, family)
        cfg = load_align_config(None, ["--method", method, "--init", str(init), "--reward", RULE,
                                       "--data.prompts", "prompts.jsonl", *QUIET])
        with pytest.raises(BiglmError) as e:
            setup_align(cfg, tmp_path / f"run-{method}-{family}")
        assert "\n" not in str(e.value)
        return str(e.value)

    ppo = "method=ppo: needs an autoregressive policy (family causal or bidirectional-ar), {} is {}; use --method " \
          "grpo or --method dpo for it"
    assert refusal("ppo", "masked") == ppo.format(tmp_path / "masked" / "init", "masked")
    assert refusal("ppo", "glm") == ppo.format(tmp_path / "glm" / "init", "glm")
    assert refusal("grpo", "glm").startswith("method=grpo: glm policies are not supported by biglm align")


class Reinforce(Method):
    """A toy method: REINFORCE, the raw reward as every token's advantage, no KL term and no clipping."""

    def advantages(self, cfg: AlignConfig, samples: Sequence[Any]) -> None:
        for s in samples:
            s.advantages = [s.score] * len(s.old)

    def loss_options(self, cfg: AlignConfig) -> dict[str, float]:
        return {"clip": 1e9}


def test_a_new_method_is_one_record_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "reinforce", Reinforce("reinforce", "REINFORCE", section="grpo",
                                                        needs=(PROMPTS, REWARD)))
    files = write_task(tmp_path)
    init = pretrain_policy(tmp_path, "causal", steps=1)
    cfg = load_align_config(None, ["--method", "reinforce", "--init", str(init), "--reward", RULE,
                                   "--data.prompts", files["prompts"], "--rollout.max_new_tokens", "2",
                                   "--train.steps", "1", *QUIET])
    trainer = setup_align(cfg, tmp_path / "run")
    trainer.fit()
    trainer.close()
    (row,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("loss_") for k in row)  # one term: the policy loss
    # on-policy (ρ = 1), rewards in [0, 1]: the loss is minus the token-weighted mean reward
    assert -1.0 <= row["loss"] <= 0.0 and math.isfinite(row["train_reward"])
    assert (row["loss"] < 0) == (row["train_reward"] > 0)
