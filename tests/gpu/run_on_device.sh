#!/usr/bin/env bash
# The whole device check for a lent GPU machine, one call (README "Training on a lent GPU"):
#   bash tests/gpu/run_on_device.sh BUDGET_S      with OUT set, on the device machine.
# Carried: .whl (compressai and pytorch-msssim from ../shared/wheels/device) and the training
# images in DATA (default .data/sub, made by python -m shared.tools.device.make_subset). Settings,
# by environment:
#   RUNS      which models to train, side by side on the one GPU for BUDGET_S each:
#             "main denoise" (default) or "main" alone (the whole GPU for the codec the
#             denoiser is fine-tuned from; then move the denoising checkpoint out of the working
#             tree for the call, carry the full training folder (make_subset.py --keep 25,
#             HOLDOUT=25) and, of .whl, only its two wheel files: .whl/svc does not fit beside).
#   HOLDOUT   --holdout-every for DATA: 7 for the default 140-image subset, 25 for the full folder.
#   MAIN_LR, DENOISE_LR   peak learning rates (2e-4, 1e-4).
#   MAIN_FROM, DENOISE_FROM   the checkpoints the runs resume from (default the shipped ones in
#             models/). The full folder leaves room for one full-size checkpoint only; for both,
#             carry half-size packs instead (`python -m shared.tools.device.pack_for_device
#             models/lw-vr-*.pt --out .carry`, both checkpoints moved out of the checkout,
#             MAIN_FROM=.carry/lw-vr-hyperprior.pt DENOISE_FROM=.carry/lw-vr-denoise.pt). Or start
#             the denoiser afresh from the main codec: DENOISE_FROM=models/lw-vr-hyperprior-*.pt.
#   BATCH     crops of 256x256 per step (16; the main codec alone can take 32: two runs side by
#             side at 16 each left the GPU 82 % busy).
#   COMPILE=0  train without torch.compile (default on: 1.09x faster steps on the 2-core CPU by
#             `latentwire bench train`, not yet measured on a GPU; a compiler failure falls back
#             to eager, and the budget includes compiling).
#   SERVICES=1  first run both services as real processes, a CUDA sender feeding a CPU receiver
#             (about a minute; needs .whl/svc, the services' packages the device image lacks, as
#             cp312 wheels: fastapi, starlette, opentelemetry-api, pydantic, pydantic-core,
#             pydantic-settings, python-dotenv, typing-inspection, annotated-types,
#             typing-extensions, anyio, uvicorn, python-multipart). Verified once (issue 3); off
#             by default so the device time goes to training.
# What comes back (at most 8 files): each run's weights in two parts, a tarball per run with its
# log, val.jsonl, meta.pt and CUDA-encoded streams, and the services report when it ran.
set -u
BUDGET=${1:-370}
RUNS=${RUNS:-main denoise}
DATA=${DATA:-.data/sub}
HOLDOUT=${HOLDOUT:-7}
SERVICES=${SERVICES:-0}
COMPILE=${COMPILE:-1}
export PYTHONUNBUFFERED=1
WHEELS=(.whl/*.whl)
[ "$SERVICES" = 1 ] && WHEELS+=(.whl/svc/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${WHEELS[@]}" || exit 1
# The wheels, then the checkout itself (not installed): `python3 -m shared.tools.device.*` runs from it.
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numpy, compressai; print('torch', torch.__version__, 'numpy', numpy.__version__, 'compressai', compressai.__version__)"
echo "training images in $DATA: $(ls "$DATA" | wc -l), holdout every $HOLDOUT; runs: $RUNS; budget ${BUDGET}s"

R=/tmp/results
if [ "$SERVICES" = 1 ]; then
    mkdir -p $R
    timeout 100 python3 -m shared.tools.device.services_on_device --out $R/services --sender-device cuda -n 64 -c 16 \
        >$R/services.log 2>&1
    echo "services check exit $?"
    tail -40 $R/services.log
    cp $R/services.log "$OUT/services.log"
fi

declare -A PIDS
for run in $RUNS; do
    mkdir -p $R/$run
    case $run in
        main) extra=(--resume "$(ls ${MAIN_FROM:-models/lw-vr-hyperprior-*.pt})" --lr "${MAIN_LR:-2e-4}") ;;
        denoise) extra=(--resume "$(ls ${DENOISE_FROM:-models/lw-vr-denoise-*.pt})" --noise 50 --noise-jpeg-prob 0.1
                        --lr "${DENOISE_LR:-1e-4}") ;;
        *) echo "unknown run $run (main or denoise)"; exit 1 ;;
    esac
    timeout $((BUDGET + 60)) python3 -m shared.tools.device.train_on_device --data "$DATA" --holdout-every "$HOLDOUT" \
        --val-every 1500 --out $R/$run --time-budget-s "$BUDGET" --batch-size "${BATCH:-16}" --crop 256 "${extra[@]}" \
        $([ "$COMPILE" = 1 ] && echo --compile) \
        >$R/$run/train.log 2>&1 &
    PIDS[$run]=$!
done
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
for run in $RUNS; do
    wait "${PIDS[$run]}"; echo "$run training exit $?"
done
for run in $RUNS; do
    grep -E "ms/step|val_loss|done at|wall time|returning|Error|error" $R/$run/train.log | tail -12
    for i in 0 1; do [ -f $R/$run/weights_part$i.pt ] && cp $R/$run/weights_part$i.pt "$OUT/${run}_w$i.pt"; done
    (cd $R/$run && tar czf "$OUT/$run.tgz" --exclude 'weights_part*' .)
done

ls -la "$OUT"
