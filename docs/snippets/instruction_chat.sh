# Instruction-tune the demo model on chat data, then chat with it in the terminal and over the
# OpenAI-compatible API. Run `bash scripts/demo.sh` first, then from the repository root
# `. .venv/bin/activate` and `bash docs/snippets/instruction_chat.sh` (about 15 minutes on 2 CPU cores).
set -euo pipefail
RUN=${RUN:-runs/demo}                # the pretrained model to start from
OUT=${OUT:-runs/tutorial-chat}       # everything below is written under $OUT
STEPS=${STEPS:-600} PORT=${PORT:-8000}
rm -rf "$OUT"

# 1. Chat data: one record per line, either {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
#    or FLAN-style {"instruction", "input", "output"}; both kinds may share a file. This builder asks
#    questions about the first sentence of each Wikipedia summary (a third are two-turn conversations):
#    training records from the articles the demo model pretrained on, valid/test from those it held out.
python -m biglm.data.builders.make_instructions data/demo/wiki.jsonl --run "$RUN" --out "$OUT/data"
head -n 2 "$OUT/data/train.jsonl"

# 2. Instruction tuning: task kind `instruction` (configs/finetune/demo-instruct.yaml: the reply's length from
#    a length head, 10 Mask-Predict passes), scored on the held-out test records at the end.
biglm finetune --config configs/finetune/demo-instruct.yaml --init "$RUN" --out "$OUT/chat" \
  --train "$OUT/data/train.jsonl" --valid "$OUT/data/valid.jsonl" --test "$OUT/data/test.jsonl" \
  --train.steps "$STEPS" --train.lr 3e-3

# 3. Chat in the terminal: piped, every Mask-Predict pass is a line (interactive, the reply forms in place).
printf '%s\n' 'Give the first three words.\n\nThe Pacific Ocean is the largest of the oceans.' \
  'What is the last word?' '/reset' 'What is the title of the article?\n\nPhotosynthesis is a process used by plants.' |
  biglm chat --ckpt "$OUT/chat"

# 4. Serve it: the OpenAI chat API under /v1 (and a live page at http://127.0.0.1:$PORT/), stopped at the end.
biglm serve --ckpt "$OUT/chat" --port "$PORT" --quiet & server=$!
trap 'kill "$server"' EXIT
curl -s --fail --retry 60 --retry-connrefused --retry-delay 1 "http://127.0.0.1:$PORT/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is the last word?\n\nThe cat sat on the mat."}], "seed": 0}'
echo
