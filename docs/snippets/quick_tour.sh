# The verbs, one command each, on the demo's model: run `bash scripts/demo.sh` first, then from the repository
# root `. .venv/bin/activate` and `bash docs/snippets/quick_tour.sh` (about 2 minutes on 2 CPU cores).
set -euo pipefail
OUT=${OUT:-runs/tour} LIMIT=${LIMIT:-100} PORT=${PORT:-8000}
rm -rf "$OUT"   # everything below is written under $OUT

biglm pretrain --config configs/micro.yaml --out "$OUT/micro" --data.cache_dir "$OUT/cache"  # a tiny model, seconds
biglm generate --ckpt runs/demo --prompt "The Pacific Ocean is" --max-new-tokens 32 --steps 10
echo "Tell me about the Pacific Ocean." | biglm chat --ckpt runs/demo --max-new-tokens 24
biglm evaluate --ckpt runs/demo --tasks demo_wiki_continuation --include-path runs/demo/tasks \
  --scoring single-pass --limit "$LIMIT" --out "$OUT/eval"
biglm finetune --config configs/finetune/demo-titles-qa.yaml --init runs/demo --out "$OUT/qa" --epochs 1
biglm predict --ckpt "$OUT/qa" --input runs/demo/titles/qa_test.jsonl --out "$OUT/qa-answers.jsonl"
biglm export-hf --ckpt runs/demo --out "$OUT/hf"          # loads with transformers, no biglm needed
biglm expand --ckpt runs/demo --out "$OUT/wide" --hidden-size 2x   # grown in width, same function
biglm serve --ckpt runs/demo --port "$PORT" --quiet & server=$!
trap 'kill "$server"' EXIT
curl -s --fail --retry 60 --retry-connrefused --retry-delay 1 "http://127.0.0.1:$PORT/v1/completions" \
  -H 'Content-Type: application/json' -d '{"prompt": "The Pacific Ocean is", "max_tokens": 16}'
