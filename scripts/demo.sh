#!/usr/bin/env bash
# The main job, from a fresh machine: set up, fetch the bundled corpus, train a tokenizer, pretrain the
# `demo` config with the BiGLM objective (about 8 minutes on 2 CPU cores), plot it, evaluate it on held-out
# text and generate.
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

biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --show-steps \
  --prompt "The French Revolution was"
biglm generate --ckpt runs/demo --max-new-tokens 48 --steps 10 --seed 0 \
  --prompt "Photosynthesis is the process" \
  --prompt "ROMEO. But soft, what light" \
  --prompt "The Pacific Ocean is"
