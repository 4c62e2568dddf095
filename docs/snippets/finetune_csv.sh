# Fine-tune the demo model on your own data: a CSV of labelled sentences (classification as a cloze) and a
# JSONL of source/target pairs (seq2seq), then predict and score. Run `bash scripts/demo.sh` first, then from
# the repository root `. .venv/bin/activate` and `bash docs/snippets/finetune_csv.sh` (about 10 minutes on 2 cores).
set -euo pipefail
RUN=${RUN:-runs/demo}                   # the pretrained model to start from
OUT=${OUT:-runs/tutorial-finetune}      # everything below is written under $OUT
N=${N:-600} EPOCHS=${EPOCHS:-10} STEPS=${STEPS:-900}
rm -rf "$OUT" && mkdir -p "$OUT/data"

# 1. The data. Yours can have any field names (they are mapped below); here both files are made from the
#    demo's Wikipedia summaries: N sentences labelled yes/no for "does it contain a number?" (CSV), and each
#    article's first sentence with the article's title (JSONL). 10% of each for validation, 10% for test.
python - "$OUT/data" "$N" <<'PY'
import csv, json, re, sys
out, n = sys.argv[1], int(sys.argv[2])
docs = [json.loads(line)["text"].split("\n", 1) for line in open("data/demo/wiki.jsonl")]
docs = [(title.strip(), re.split(r"(?<=[.!?])\s+", " ".join(body.split()))) for title, body in docs if body.strip()]
numbered = {True: [], False: []}
for _, sentences in docs:
    for s in sentences:
        if 5 <= len(s.split()) <= 30:
            numbered[bool(re.search(r"\d", s))].append(s)
labelled = [[s, "yes" if re.search(r"\d", s) else "no"] for pair in zip(numbered[True], numbered[False]) for s in pair]
titles = [{"sentence": s[0], "title": t} for t, s in docs if t and len(s[0].split()) >= 4]

def splits(rows):
    k = min(len(rows) // 10, 200)
    return {"train": rows[:-2 * k], "valid": rows[-2 * k:-k], "test": rows[-k:]}

for split, rows in splits(labelled[:n]).items():
    with open(f"{out}/numbers_{split}.csv", "w", newline="") as f:
        csv.writer(f).writerows([["sentence", "has_number"], *rows])
for split, rows in splits(titles).items():
    with open(f"{out}/titles_{split}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
PY
head -n 3 "$OUT/data/numbers_train.csv" "$OUT/data/titles_train.jsonl"

# 2. Classification from the CSV, as a cloze: each label's word fills the {blank} (no new head). The CSV's
#    column `has_number` is the label; the template reads the other columns by name.
biglm finetune --task cloze-classification --init "$RUN" --out "$OUT/numbers" \
  --train "$OUT/data/numbers_train.csv" --valid "$OUT/data/numbers_valid.csv" --test "$OUT/data/numbers_test.csv" \
  --label-field has_number --template "{sentence} Does it contain a number? {blank}" \
  --verbalizer yes=Yes --verbalizer no=No --epochs "$EPOCHS" --train.lr 3e-3 --train.warmup_steps 30
biglm predict --ckpt "$OUT/numbers" --input "$OUT/data/numbers_test.csv" --out "$OUT/numbers_predictions.jsonl"
head -n 3 "$OUT/numbers_predictions.jsonl"

# 3. seq2seq from the JSONL: the title from the sentence, written by Mask-Predict (a length head picks the
#    length). --source-field / --target-field map the JSONL's fields.
biglm finetune --task seq2seq --init "$RUN" --out "$OUT/titles" \
  --train "$OUT/data/titles_train.jsonl" --valid "$OUT/data/titles_valid.jsonl" \
  --source-field sentence --target-field title --train.steps "$STEPS" --train.lr 3e-3 --train.warmup_steps 30
# score the best checkpoint on the test file: ROUGE, BLEU and exact match, predictions written, 5 shown
biglm finetune --eval-only --ckpt "$OUT/titles" --test "$OUT/data/titles_test.jsonl" --split test --show 5
