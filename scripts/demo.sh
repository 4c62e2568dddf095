#!/usr/bin/env bash
# The main job, from a fresh machine: set up, fetch the bundled corpus, train a tokenizer, pretrain the
# `demo` config with the BiGLM objective (about 8 minutes on 2 CPU cores), plot it, evaluate it on held-out
# text, fine-tune it on a small real-text extractive QA task (article names) and generate.
# Extra arguments are config overrides for the pretraining, e.g. `--train.steps 100`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

biglm prepare-data --out data/demo
if [ ! -f data/demo/tokenizer/tokenizer.json ]; then
  biglm tokenizer train data/demo/wiki.jsonl data/demo/shakespeare.jsonl --out data/demo/tokenizer --vocab-size 8192
fi
resume=()
if [ -d runs/demo/checkpoints ]; then resume=(--resume); fi
biglm pretrain --config configs/demo.yaml --out runs/demo "${resume[@]}" "$@"
biglm plot runs/demo --out runs/demo/loss.png

# Zero-shot, through lm-evaluation-harness: 4-way tasks built from the Wikipedia summaries the run held out
# (its own data.val_fraction / val_seed, read by --run), so the model never trained on them.
python -m biglm.evaluate.make_tasks data/demo/wiki.jsonl --out runs/demo/tasks --prefix demo_wiki \
  --run runs/demo --max-items 400
# The paper's scorer (greedy-order, the default), then single-pass: the better one at this size, 14x faster.
for scoring in greedy-order single-pass; do
  biglm evaluate --ckpt runs/demo --tasks demo_wiki_continuation,demo_wiki_next_sentence \
    --include-path runs/demo/tasks --scoring "$scoring"
done

# Fine-tuning: find the article's name in the first sentence of its (held-out) Wikipedia summary, as extractive
# QA with a span head; trained on the articles the demo model pretrained on, scored on the ones it held out,
# against the lead-k baseline (the sentence's first k words). make_titles also writes the seq2seq version
# (configs/finetune/demo-titles.yaml, Mask-Predict with a length head; see docs/results/learning.md for how it fares).
python -m biglm.data.builders.make_titles data/demo/wiki.jsonl --run runs/demo --out runs/demo/titles
ft_resume=()
if [ -d runs/demo-titles-qa/checkpoints ]; then ft_resume=(--resume); fi
biglm finetune --config configs/finetune/demo-titles-qa.yaml --init runs/demo --out runs/demo-titles-qa \
  "${ft_resume[@]}" --show 6
biglm plot runs/demo-titles-qa --out runs/demo-titles-qa/loss.png
python - <<'PY'
import json
base = json.load(open("runs/demo/titles/baseline.json"))
model = json.load(open("runs/demo-titles-qa/eval/finetune_test.json"))["scores"]
print(f"| held-out test ({model['examples']} articles) | exact match | F1 |\n|---|---:|---:|")
print(f"| fine-tuned demo model (span head) | {model['exact_match']:.1f} | {model['f1']:.1f} |")
print(f"| baseline: {base['baseline']} | {base['qa']['exact_match']:.1f} | {base['qa']['f1']:.1f} |")
PY

biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --show-steps \
  --prompt "The French Revolution was"
biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --seed 0 \
  --prompt "Photosynthesis is the process" \
  --prompt "ROMEO. But soft, what light" \
  --prompt "The Pacific Ocean is"
