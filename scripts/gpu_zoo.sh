#!/usr/bin/env bash
# The whole zoo in ONE call on a GPU machine, inside a time budget: calibrate, plan, search, train
# (recipes/zoo.yaml), publish into model_cards/, attack every new card (biotorch robustness: FGSM and PGD-10,
# exact/rule/transfer gradients, on ROBUST_LIMIT test images, a fixed sample) and publish again so the cards show it,
# check every card through torch.hub on the device, pack.
#
#   data:   a git-ignored data/ folder travels along: bash scripts/gpu_zoo.sh --stage copies ../shared/data there
#   probe:  run(command="bash scripts/gpu_zoo.sh --probe", carry=["data"], timeout_s=90)        (≤ 60 s)
#   zoo:    run(command="BUDGET_S=470 bash scripts/gpu_zoo.sh", carry=["data"], timeout_s=540)
#   here:   cat <files_at>/cards.tar.gz.part-* | tar xz   (this zoo's cards, biotorch/pretrained.json, README.md)
#
# Every step has its own timeout; together they end inside BUDGET_S. What comes back is small: zoo.log
# (every progress line as it happens, so a cut call still returns it), cards.tar.gz.part-NN (this zoo's card folders, the
# index and the README) and records.tar.gz (every run's metrics, history, alignment and recipe, the search).
# Runs with `python3` as found (PYTHON=... to change), PYTHONPATH=., no pip install, no network.
# Knobs: BUDGET_S, ZOO (the zoo file), DEVICE, OUT, RUNS, TRAIN_ARGS (extra train_zoo.py flags),
# VERIFY_PATTERNS (which cards verify_cards.py checks; default all),
# PUBLISH_S / ROBUST_S / VERIFY_S / PACK_S (seconds kept for the steps after training; ROBUST_S=0 skips the
# attacks), ROBUST_LIMIT (test images attacked per card).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--stage" ]]; then
  mkdir -p data/cifar10_jpeg data/fashion_mnist
  cp -n ../shared/data/cifar10-jpeg.tar.gz data/cifar10_jpeg/
  cp -n ../shared/data/fashion-mnist/*.gz data/fashion_mnist/
  exit 0
fi
T0=$(date +%s)
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_out}
RUNS=${RUNS:-runs/gpu_zoo}
ZOO=${ZOO:-recipes/zoo.yaml}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-470}
PUBLISH_S=${PUBLISH_S:-40}
ROBUST_S=${ROBUST_S:-90}
ROBUST_LIMIT=${ROBUST_LIMIT:-2000}
VERIFY_S=${VERIFY_S:-60}
PACK_S=${PACK_S:-15}
export PYTHONPATH=. PYTHONUNBUFFERED=1 BIOTORCH_DATA=${BIOTORCH_DATA:-data}
mkdir -p "$OUT"
LOG="$OUT/zoo.log"
say() { echo "[gpu_zoo $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }

if [[ "${1:-}" == "--probe" ]]; then
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi") 2>&1 | tee -a "$LOG"
  timeout 58 "$PY" scripts/train_zoo.py --probe ${DEVICE:+--device "$DEVICE"} 2>&1 | tee -a "$LOG"
  exit "${PIPESTATUS[0]}"
fi

say "budget ${BUDGET_S}s: training, then publish ${PUBLISH_S}s, robustness ${ROBUST_S}s, verify ${VERIFY_S}s, pack ${PACK_S}s"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi") 2>&1 | tee -a "$LOG"
TRAIN_S=$(( $(left) - PUBLISH_S - ROBUST_S - VERIFY_S - PACK_S ))
# train_zoo stops its runs at its own deadline; the timeout is the backstop (it kills, keeping earlier runs).
timeout $(( TRAIN_S + 15 )) "$PY" scripts/train_zoo.py --zoo "$ZOO" --out "$RUNS" --budget-s "$TRAIN_S" \
  --device "$DEVICE" ${TRAIN_ARGS:-} 2>&1 | tee -a "$LOG"
say "train_zoo exit ${PIPESTATUS[0]}"

PUBLISH_T0=$(date +%s)
timeout "$PUBLISH_S" "$PY" scripts/publish.py "$RUNS" --no-push 2>&1 | tee -a "$LOG"
say "publish exit ${PIPESTATUS[0]}"
PUBLISH_TOOK=$(( $(date +%s) - PUBLISH_T0 ))
# This zoo's card names (runs/<name>-seedN → <name>), those publish built.
NAMES=$(ls "$RUNS" 2>/dev/null | sed -n 's/-seed[0-9]*$//p' | sort -u | while read -r n; do [[ -d "model_cards/$n" ]] && echo "$n"; done)
# The attacks get ROBUST_S less twice what publish took: the cards are rebuilt after them (publish keeps a
# block measured on the same weights), which costs about what publishing did.
ROBUST_END=$(( $(date +%s) + ROBUST_S ))
ATTACK_S=$(( ROBUST_S - 2 * PUBLISH_TOOK - 2 ))
if (( ROBUST_S > 0 && ATTACK_S >= 5 )) && [[ -n "$NAMES" ]]; then
  timeout "$ATTACK_S" "$PY" -m biotorch robustness $NAMES --limit "$ROBUST_LIMIT" --device "$DEVICE" \
    --write model_cards 2>&1 | tee -a "$LOG"
  say "robustness exit ${PIPESTATUS[0]}"
  REPUBLISH_S=$(( ROBUST_END - $(date +%s) )); (( REPUBLISH_S < 1 )) && REPUBLISH_S=1  # (timeout 0: no limit)
  timeout "$REPUBLISH_S" "$PY" scripts/publish.py "$RUNS" --no-push 2>&1 | tee -a "$LOG"
  say "publish (robustness on the cards) exit ${PIPESTATUS[0]}"
elif (( ROBUST_S > 0 )); then
  say "robustness skipped: ${ATTACK_S}s left for the attacks after ${PUBLISH_TOOK}s of publishing"
fi
VERIFY_LIMIT=$(( $(left) - PACK_S ))
if (( VERIFY_LIMIT > 5 )); then
  timeout "$VERIFY_LIMIT" "$PY" scripts/verify_cards.py ${VERIFY_PATTERNS:-"*"} --device "$DEVICE" 2>&1 | tee -a "$LOG"
  say "verify exit ${PIPESTATUS[0]}"
else
  say "verify skipped: ${VERIFY_LIMIT}s left"
fi

# Pack: the card folders + index + README, and the runs' records without resume state or weights.
# Only the card folders of this zoo's runs, split under the 16 MiB a returned file may have.
CARDS=$(for n in $NAMES; do echo "model_cards/$n"; done)
timeout "$PACK_S" tar czf - $CARDS biotorch/pretrained.json README.md | split -b 15m -d - "$OUT/cards.tar.gz.part-"
timeout "$PACK_S" tar czf "$OUT/records.tar.gz" --exclude=checkpoint --exclude='*.safetensors' --exclude='*.png' \
  --exclude='*.tmp' "$RUNS" "$RUNS-search" 2>/dev/null
say "packed: $(du -ch "$OUT"/* | tail -1 | cut -f1) in $(ls "$OUT" | wc -l) files; $(( $(date +%s) - T0 ))s of ${BUDGET_S}s"
