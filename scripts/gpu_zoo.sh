#!/usr/bin/env bash
# The ResNet-20 zoo (issue 7) in ONE call on a GPU machine: every rule on cifar10_jpeg and fashion_mnist,
# trained together in one process, then published into model_cards/ and checked through torch.hub onto
# the device; results packed into $OUT (the device tool brings back at most 8 files of 16 MiB).
#
#   data: a git-ignored data/ folder carried along: data/cifar10_jpeg/cifar10-jpeg.tar.gz and
#         data/fashion_mnist/*-ubyte.gz (copy them from ../shared/data first: scripts/gpu_zoo.sh --stage)
#   GPU:  run(command="EPOCHS=30 bash scripts/gpu_zoo.sh", carry=["data"], timeout_s=...)
#   CPU smoke test, in a scratch worktree (it writes model_cards/):
#     git worktree add /tmp/smoke && cp -r data /tmp/smoke/ && cd /tmp/smoke &&
#     EPOCHS=1 LIMIT=256 DEVICE=cpu SKIP_CALIBRATION=1 RULES=bp,fa,dfa bash scripts/gpu_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--stage" ]]; then  # copy the shared data into the carried folder
  mkdir -p data/cifar10_jpeg data/fashion_mnist
  cp -n ../shared/data/cifar10-jpeg.tar.gz data/cifar10_jpeg/
  cp -n ../shared/data/fashion-mnist/*.gz data/fashion_mnist/
  exit 0
fi
OUT=${OUT:-runs/gpu_out}
EPOCHS=${EPOCHS:-30}
SEEDS=${SEEDS:-0}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs/gpu_zoo}
export PYTHONPATH=. BIOTORCH_DATA=data
mkdir -p "$OUT"
nvidia-smi > "$OUT/device.txt" 2>&1 || true

# 1. calibrate: images/s of one run and of all runs together, a few hundred steps (fa, batch 128 and 512)
if [[ -z "${SKIP_CALIBRATION:-}" ]]; then
  python scripts/bench_train.py --model resnet20 --rules bp,fa --batch-sizes 128 512 --device "$DEVICE" \
    --amp bf16 --channels-last --cuda-graph --together 4 2>&1 | tee "$OUT/calibration.txt" || true
fi

# 2. the zoo: 8 rules x 2 datasets x seeds, one process, checkpoints written as runs finish
python scripts/train_zoo.py --recipe recipes/cifar10_jpeg/resnet20.yaml --recipe recipes/fashion_mnist/resnet20.yaml \
  --rules "${RULES:-all}" --seeds $SEEDS --epochs "$EPOCHS" --device "$DEVICE" --out "$RUNS" \
  ${LIMIT:+--limit-train $LIMIT} 2>&1 | tail -n 200 > "$OUT/zoo.log"

# 3. publish into model_cards/ (no push here: no network), then load every new checkpoint through
#    torch.hub.load(..., source="local") onto the device and compare with its card
python scripts/publish.py "$RUNS" --no-push 2>&1 | tail -n 50 > "$OUT/publish.log"
python - "$DEVICE" > "$OUT/verify.txt" 2>&1 <<'EOF'
import json, sys, torch
import biotorch
from biotorch.training import datasets
from biotorch.training.evaluate import evaluate
from biotorch.data import DeviceLoader
device = sys.argv[1]
for name in biotorch.list_models("resnet20_*", pretrained=True):
    cfg = biotorch.get_pretrained_cfg(name)
    arch_rule, tag = name.split(".")
    model = torch.hub.load(".", arch_rule, source="local", tag=tag, device=device)
    images, labels = datasets.load(cfg.dataset, "test", device=device)
    loader = DeviceLoader(images, labels, 1000, cfg.mean, cfg.std, train=False, device=device)
    if cfg.recipe.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.recipe.get("amp"))
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=amp)) if amp else None  # as trained
    top1 = evaluate(model, loader, cfg.num_classes, autocast=autocast)["top1"]
    print(f"{name}: hub top-1 {top1:.2f}  card {cfg.metrics['test_top1']:.2f}  "
          f"{'OK' if abs(top1 - cfg.metrics['test_top1']) < 0.1 else 'MISMATCH'}")
EOF

# 4. pack: model_cards folders of this zoo + index + README table, split under 16 MiB
tar czf "$OUT/cards.tar.gz" model_cards/resnet20_* biotorch/pretrained.json README.md
split -b 15m "$OUT/cards.tar.gz" "$OUT/cards.tar.gz.part-" && rm "$OUT/cards.tar.gz"
tar czf "$OUT/records.tar.gz" --exclude='*.safetensors' --exclude='checkpoint' "$RUNS"
ls -la "$OUT"
