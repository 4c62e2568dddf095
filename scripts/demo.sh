#!/usr/bin/env bash
# The main job, from a fresh machine: set up, fetch the bundled corpus, train a tokenizer, pretrain the
# `demo` config with the BiGLM objective (about 8 minutes on 2 CPU cores), plot it, evaluate it on held-out
# text, fine-tune it on a small real-text seq2seq task (article titles) and generate.
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

# Fine-tuning (seq2seq with Mask-Predict and the length head): name a Wikipedia article from the first sentence
# of its summary; trained on the articles the demo model pretrained on, scored on the ones it held out, against
# the lead-k baseline (the sentence's first k words).
python -m biglm.finetune.make_titles data/demo/wiki.jsonl --run runs/demo --out runs/demo/titles
ft_resume=()
if [ -d runs/demo-titles/checkpoints ]; then ft_resume=(--resume); fi
biglm finetune --config configs/finetune/demo-titles.yaml --init runs/demo --out runs/demo-titles \
  "${ft_resume[@]}" --show 8
biglm plot runs/demo-titles --out runs/demo-titles/loss.png
python - <<'PY'
import json
base = json.load(open("runs/demo/titles/baseline.json"))
model = json.load(open("runs/demo-titles/eval/finetune_test.json"))["scores"]
print("| test (held-out articles) | rouge1 | rougeL | exact_match |\n|---|---:|---:|---:|")
print(f"| fine-tuned demo model | {model['rouge1']:.1f} | {model['rougeL']:.1f} | {model['exact_match']:.1f} |")
print(f"| baseline: {base['baseline']} | {base['rouge1']:.1f} | {base['rougeL']:.1f} | {base['exact_match']:.1f} |")
PY

biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --show-steps \
  --prompt "The French Revolution was"
biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --seed 0 \
  --prompt "Photosynthesis is the process" \
  --prompt "ROMEO. But soft, what light" \
  --prompt "The Pacific Ocean is"
