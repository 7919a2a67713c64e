#!/usr/bin/env bash
# The whole device check for a lent GPU machine, one call (README "Training on a lent GPU"):
#   carry .whl (compressai, pytorch-msssim; .whl/svc: the services' packages missing there, as
#   cp312 wheels of this venv's versions: fastapi, starlette, opentelemetry-api, pydantic,
#   pydantic-core, pydantic-settings, python-dotenv, typing-inspection, annotated-types,
#   typing-extensions, anyio, uvicorn, python-multipart; README.md's "Training on a lent GPU") and
#   .data/sub: 140 of BSDS500's 500 images from tests/gpu/make_subset.py, the 20 held out by
#   `latentwire train` each with 6 others (the 64 MiB a call may carry holds no more beside
#   models/), so --holdout-every 7 holds out the same 20; run `bash tests/gpu/run_on_device.sh
#   BUDGET_S` with OUT set.
# 1. both services as real processes, a CUDA sender feeding a CPU receiver (about a minute);
# 2. two training runs side by side on the one GPU, BUDGET_S each: the main codec resumed from
#    the shipped checkpoint, and the denoising model resumed from its shipped checkpoint.
# What comes back (at most 8 files): each run's weights in two parts, a tarball per run with its
# log, val.jsonl, meta.pt and CUDA-encoded streams, and the services report.
set -u
BUDGET=${1:-370}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl .whl/svc/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numpy, compressai, fastapi, pydantic; print('torch', torch.__version__, 'numpy', numpy.__version__, 'compressai', compressai.__version__)"

R=/tmp/results
mkdir -p $R/main $R/denoise
timeout 100 python3 tests/gpu/services_on_device.py --out $R/services --sender-device cuda -n 64 -c 16 \
    >$R/services.log 2>&1
echo "services check exit $?"
tail -40 $R/services.log
cp $R/services.log "$OUT/services.log"

MAIN=$(ls models/lw-vr-hyperprior-*.pt) DENOISE=$(ls models/lw-vr-denoise-*.pt)
timeout $((BUDGET + 60)) python3 tests/gpu/train_on_device.py --data .data/sub --holdout-every 7 --val-every 1500 --out $R/main --time-budget-s "$BUDGET" \
    --resume "$MAIN" --lr "${MAIN_LR:-2e-4}" --batch-size 16 --crop 256 >$R/main/train.log 2>&1 &
P1=$!
timeout $((BUDGET + 60)) python3 tests/gpu/train_on_device.py --data .data/sub --holdout-every 7 --val-every 1500 --out $R/denoise --time-budget-s "$BUDGET" \
    --resume "$DENOISE" --noise 50 --noise-jpeg-prob 0.1 --lr "${DENOISE_LR:-1e-4}" --batch-size 16 --crop 256 \
    >$R/denoise/train.log 2>&1 &
P2=$!
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait $P1; echo "main training exit $?"
wait $P2; echo "denoise training exit $?"
for run in main denoise; do
    grep -E "ms/step|val_loss|done at|wall time|returning|Error|error" $R/$run/train.log | tail -12
    for i in 0 1; do [ -f $R/$run/weights_part$i.pt ] && cp $R/$run/weights_part$i.pt "$OUT/${run}_w$i.pt"; done
    (cd $R/$run && tar czf "$OUT/$run.tgz" --exclude 'weights_part*' .)
done

ls -la "$OUT"
