# Align a policy with preferences: sample pairs of responses, judge them, train a reward model on the
# judgements, then optimise the policy with PPO against it and with DPO on the pairs themselves. On the
# synthetic task that ships with biglm (a prompt is a few letters and "?"; the right answer is "yes" when the
# letter a is among them, else "no") with a micro causal policy: about 2 minutes on 2 CPU cores.
# From the repository root, with `. .venv/bin/activate`: bash docs/snippets/align_preferences.sh
set -euo pipefail
OUT=${OUT:-runs/tutorial-align}      # everything below is written under $OUT
POLICY_STEPS=${POLICY_STEPS:-100} EPOCHS=${EPOCHS:-10} STEPS=${STEPS:-96}
rm -rf "$OUT"

# 1. The task: prompts, held-out prompts, pretraining text, and a start policy pretrained on prompts answered
#    yes or no at random (right half the time).
python -m biglm.align.synthetic "$OUT/data" --steps "$POLICY_STEPS"
POLICY=$OUT/data/policy-causal

# 2. Judged pairs: each prompt answered twice by the policy, the better answer chosen. People judge on a local
#    page (biglm annotate --prompts "$OUT/data/prompts.jsonl" --ckpt "$POLICY" --out prefs.jsonl) and an AI
#    judge through biglm judge; here the task's rule judges in their place, writing the same format.
python - "$OUT/data" <<'PY'
import json, sys
from biglm.align.synthetic import contains_a, sample_pairs
data = sys.argv[1]
for prompts, seeds in (("prompts", (1, 2)), ("valid", (3, 4))):
    with open(f"{data}/prefs-{prompts}.jsonl", "w") as f:
        for prompt, a, b in sample_pairs(f"{data}/policy-causal", f"{data}/{prompts}.jsonl", seeds):
            ra, rb = contains_a([prompt, prompt], [a, b])
            choice = "A" if ra > rb else "B" if rb > ra else "both_good" if ra == 1 else "both_bad"
            f.write(json.dumps({"prompt": prompt, "response_a": a, "response_b": b, "choice": choice,
                                "annotator": "rule"}) + "\n")
PY
head -n 3 "$OUT/data/prefs-prompts.jsonl"

# 3. A reward model: the policy plus a scalar head, trained on the judged pairs (ties left out).
biglm finetune --task reward --init "$POLICY" --train "$OUT/data/prefs-prompts.jsonl" \
  --valid "$OUT/data/prefs-valid.jsonl" --out "$OUT/rm" --epochs "$EPOCHS" \
  --train.global_batch_size 16 --train.lr 3e-3 --train.warmup_steps 5
printf '%s\n' '{"prompt": "c a f ?", "response": "yes"}' '{"prompt": "c a f ?", "response": "no"}' \
  '{"prompt": "c b f ?", "response": "yes"}' '{"prompt": "c b f ?", "response": "no"}' > "$OUT/data/responses.jsonl"
biglm reward --ckpt "$OUT/rm" --input "$OUT/data/responses.jsonl"    # the right answers should score higher

# 4. PPO against the reward model, with the KL and pretraining (λ_PT) anchors; held-out reward and KL
#    are logged at every evaluation.
biglm align --method ppo --init "$POLICY" --reward "$OUT/rm" --prompts "$OUT/data/prompts.jsonl" \
  --valid-prompts "$OUT/data/valid.jsonl" --pretrain "$OUT/data/pretrain.jsonl" \
  --pretrain-valid "$OUT/data/pretrain-valid.jsonl" --ptx.coef 0.1 --rollout.max_new_tokens 2 \
  --rollout.prompts_per_rollout 32 --train.global_batch_size 32 --train.lr 2e-3 \
  --steps "$STEPS" --train.eval_every "$STEPS" --out "$OUT/ppo"

# 5. DPO on the judged pairs directly (no reward model).
biglm align --method dpo --init "$POLICY" --preferences "$OUT/data/prefs-prompts.jsonl" \
  --valid-preferences "$OUT/data/prefs-valid.jsonl" --dpo.beta 0.5 --steps "$STEPS" --train.lr 3e-3 --out "$OUT/dpo"

# 6. What each changed, at the first and last evaluation. PPO: the reward model's mean reward on the held-out
#    prompts and the KL to the start policy. DPO: the held-out pairs its implicit reward orders right, and how
#    the chosen responses' log-likelihood moved (DPO may widen the margin by lowering both responses). Then
#    each policy's greedy answers to a prompt with the letter a and one without.
python - "$OUT" <<'PY'
import json, sys
for run, key, show in (("ppo", "val_reward", "val_reward val_kl"), ("dpo", "val_margin", "val_accuracy val_chosen_shift")):
    rows = [r for r in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl")) if key in r]
    for r in (rows[0], rows[-1]):
        print(f"{run} step {r['step']}: " + ", ".join(f"{k} {r[k]:.3f}" for k in show.split()))
PY
for policy in "$OUT/ppo" "$OUT/dpo"; do
  biglm generate --ckpt "$policy" --prompt "c a f ?" --prompt "c b f ?" --max-new-tokens 2
done
