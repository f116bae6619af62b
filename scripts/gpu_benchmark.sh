#!/usr/bin/env bash
# The GPU run (issue #16), as one script for a machine with a CUDA PyTorch: run it from the repository root.
#   [STEPS="cli benchmark ..."] scripts/gpu_benchmark.sh [OUT_DIR]   (default OUT_DIR: $OUT, else benchmarks/results)
# Steps, run in the order STEPS lists them (default: all but tiles and compile):
#   cli        the CLI on the bundled scene with the paper-size model on cuda (--backend auto, --tile auto), logged;
#   benchmark  python -m benchmarks --device cuda --scene-size 10980 (a full Sentinel-2 tile, synthetic);
#   zstd       the same with the tile's COG written with --compress zstd --compress-level 1;
#   cog        python -m benchmarks.cog_copy: the final COG copy alone, on this machine's CPUs and disk;
#   fused      fp16 and bf16 under autocast against the fused networks (the fp16 and bf16 backends on CUDA), each
#              also with fp32 residual stream, head and tail (#27 item 3), and --precision auto through the
#              predictor, one batch of windows; the predictor's output check on this machine's CPUs;
#   accuracy   python -m benchmarks.precision_accuracy --device cuda --size 0: each precision's distance to float64
#              on the whole bundled scene (the goal of #27 item 3: p99 <= 8 DN, max <= 40 DN);
#   pipeline   python -m benchmarks.pipeline: three 10980x4096 scenes, one run against one at a time;
#   tiles      the same with three full 10980x10980 tiles (deflate), then one run of them with zstd level 1;
#   keepclear  python -m benchmarks.keep_clear --device cuda --size 5490: plain against --mask-out, --keep-clear and
#              both on a quarter tile, with the seconds of the mask's parts and of the network's wait for the
#              writer, and both again with no window held during the statistics pass (#27 item 4: <= 1.25x plain);
#   overviews  python -m benchmarks.overviews --width 10980 --height 4096, with --pause 0.09 (the CPU left free as
#              the bf16 network leaves it): the tail after the last window when the COG is compressed while
#              written against GDAL's copy, with and without the overviews made while writing (#27 item 4);
#   reads      python -m benchmarks.product_read --height 2048: a full-width product's JPEG 2000 bands read as a
#              scene run reads them, band files in turn or side by side (13 at once here), GDAL's cache at 256 MiB or
#              1 GiB, with and without the masks (#27 item 4: do the reads keep up with the network on 16 cores?);
#   nonet      python -m benchmarks.without_network --size 10980: a full tile's run planned as on a GPU with the
#              network replaced by the identity, plain and with --keep-clear --mask-out (held and not): what the
#              CPU side of a run takes on 16 cores (#27 item 4: below the network's ~11 s, or it bounds the run);
#   trainflags dsen2cr train, paper and paper-fast, one batch of 2 (two training patches) on synthetic 256² patches on
#              cuda, then weights info:
#              the arithmetic each run records, read inside it from PyTorch's flags (#27 item 1: the paper config's
#              is IEEE fp32 convolutions and matmuls on the GPU, paper-fast's TF32 and bf16-mixed);
#   training   python -m benchmarks.training_rate --device cuda: paper and paper-fast, the loader alone (8 and 16
#              workers), the training step alone and end to end (#27 item 5: end to end >= 90 % of the step);
#   compile    bf16 autocast against bf16 autocast compiled on one batch of the scene's windows;
#   evaluate   python -m benchmarks.evaluate_rate --device cuda --variant dsen2cr --num-workers 4: 96 patches with
#              the paper-size model, scored on the main thread after each batch against on threads beside the
#              network (last: the machine's cores read and score, the GPU waits on them).
# Wheels in .whl/ are installed under /tmp/site first, each package from the wheel that fits the device's Python
# (pip chooses). The device image lacks rasterio and imagecodecs (without it GDAL's copy compresses the COGs, and
# the script says so): scripts/gpu_wheels.sh puts them in .whl/ within the 64 MiB a run carries; then
#   run(command="scripts/gpu_benchmark.sh", carry=[".whl"], timeout_s=600)
# BUDGET (default 560 s: a device command runs 600 s at most) bounds the steps together: a step starts only with
# 30 s of it left, and no step's timeout passes its end, so the script ends with the results of the steps it ran.
set -u
SECONDS=0  # the budget counts from here (installing the wheels too)
OUT_DIR=${1:-${OUT:-benchmarks/results}}
# In the order given: the default puts #27's measurements first (the whole list may not fit a 15-minute lease).
STEPS=${STEPS:-accuracy fused trainflags keepclear training overviews cli benchmark reads pipeline nonet zstd cog evaluate}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    for package in $(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort -u); do
        python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$package" || echo "no wheel of $package in .whl/ fits this Python: skipped"
    done
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.log"
python3 -c "import imagecodecs" 2>/dev/null \
    || echo "imagecodecs is not installed here: COGs are compressed by GDAL's copy (carry its wheel in .whl/)" | tee -a "$OUT_DIR/gpu.log"
python3 -c "import torch, rasterio; print('torch', torch.__version__, 'rasterio', rasterio.__version__)" \
    | tee -a "$OUT_DIR/gpu.log"
timeout 60 python3 -m dsen2cr.cli doctor 2>&1 | tee -a "$OUT_DIR/gpu.log" || true  # the install as the tool sees it

step_cli() {
python3 - "$scratch" <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu.log"
import sys
from dsen2cr import create_model
from dsen2cr.weights import save_weights
save_weights(create_model("dsen2cr-nosar"), f"{sys.argv[1]}/paper-nosar.safetensors")
EOF
TIMEFORMAT="cli remove-clouds, whole process: %R s"
time timeout $(cap 120) python3 -m dsen2cr.cli -v remove-clouds --weights "$scratch/paper-nosar.safetensors" --device cuda \
    --s2 src/dsen2cr/sample_data/scene/T33UUU_20170216T102101_L1C_10m.tif --out "$scratch/scene.tif" \
    --no-progress 2>&1 | tee -a "$OUT_DIR/gpu.log"
python3 - "$scratch/scene.tif" <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu.log"
import sys
import rasterio
with rasterio.open(sys.argv[1]) as cog:  # what the GPU's default run says computed it
    tags = cog.tags()
for key in ("PRECISION", "BACKEND", "DEVICE", "ARITHMETIC", "CHECK_P99_DN", "CHECK_MAX_DN"):
    print(f"cli output DSEN2CR_{key}: {tags.get(f'DSEN2CR_{key}', 'none')}")
EOF
}

step_benchmark() {
    timeout $(cap 300) python3 -m benchmarks --device cuda --scene-size 10980 2>&1 | tee "$OUT_DIR/benchmark-cuda.log"
    cp benchmarks/results/benchmark-cuda.* "$OUT_DIR/" 2>/dev/null
}
step_zstd() {
    timeout $(cap 300) python3 -m benchmarks --device cuda --scene-size 10980 --compress zstd --compress-level 1 2>&1 \
        | tee "$OUT_DIR/benchmark-cuda-zstd1.log"
    cp benchmarks/results/benchmark-cuda-zstd1.* "$OUT_DIR/" 2>/dev/null
}
step_cog() {
    timeout $(cap 150) python3 -m benchmarks.cog_copy --name cog_copy-gpu-machine 2>&1 | tee "$OUT_DIR/cog_copy.log"
    cp benchmarks/results/cog_copy-gpu-machine.* "$OUT_DIR/" 2>/dev/null
}

step_pipeline() {
    timeout $(cap 240) python3 -m benchmarks.pipeline --device cuda --scenes 3 --width 10980 --height 4096 \
        --variant dsen2cr 2>&1 | tee "$OUT_DIR/pipeline.log"
    cp benchmarks/results/pipeline-cuda.* "$OUT_DIR/" 2>/dev/null
}

step_tiles() {
    timeout $(cap 300) python3 -m benchmarks.pipeline --device cuda --scenes 3 --width 10980 --height 10980 \
        --variant dsen2cr --name pipeline-cuda-tiles 2>&1 | tee "$OUT_DIR/tiles.log"
    timeout $(cap 170) python3 -m benchmarks.pipeline --device cuda --scenes 3 --width 10980 --height 10980 \
        --variant dsen2cr --compress zstd --compress-level 1 --only-together --name pipeline-cuda-tiles-zstd1 \
        2>&1 | tee "$OUT_DIR/tiles-zstd1.log"
    cp benchmarks/results/pipeline-cuda-tiles*.* "$OUT_DIR/" 2>/dev/null
}

step_fused() {
    timeout $(cap 100) python3 -m benchmarks.windows_half 2>&1 | tee -a "$OUT_DIR/gpu.log"
    timeout $(cap 60) python3 -m benchmarks.output_check --name output_check-gpu-machine 2>&1 | tee -a "$OUT_DIR/gpu.log"
    cp benchmarks/results/windows_half.* benchmarks/results/output_check-gpu-machine.* "$OUT_DIR/" 2>/dev/null
}
step_trainflags() {
    timeout $(cap 30) python3 -m dsen2cr.cli data synth --out "$scratch/synth" --count 4 --size 256 2>&1 \
        | tee -a "$OUT_DIR/gpu.log"
    for config in paper paper-fast; do
        timeout $(cap 90) python3 -m dsen2cr.cli train --config "$config" --accelerator gpu --devices 1 --no-progress \
            data.root="$scratch/synth" data.file_list="$scratch/synth/files.csv" optim.epochs=1 optim.batch_size=2 \
            trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.out_dir="$scratch/run-$config" 2>&1 \
            | tee -a "$OUT_DIR/gpu.log"
        timeout $(cap 60) python3 -m dsen2cr.cli weights info "$scratch/run-$config/checkpoints/last.ckpt" 2>&1 \
            | tee -a "$OUT_DIR/gpu.log"
    done
}
step_accuracy() {
    timeout $(cap 120) python3 -m benchmarks.precision_accuracy --device cuda --size 0 2>&1 | tee -a "$OUT_DIR/gpu.log"
    cp benchmarks/results/precision_accuracy-cuda.* "$OUT_DIR/" 2>/dev/null
}
step_keepclear() {
    timeout $(cap 200) python3 -m benchmarks.keep_clear --device cuda --size 5490 2>&1 | tee "$OUT_DIR/keep_clear.log"
    cp benchmarks/results/keep_clear-cuda.* "$OUT_DIR/" 2>/dev/null
}
step_reads() {
    timeout $(cap 150) python3 -m benchmarks.product_read --height 2048 --name product_read-gpu-machine 2>&1 \
        | tee "$OUT_DIR/product_read.log"
    cp benchmarks/results/product_read-gpu-machine.* "$OUT_DIR/" 2>/dev/null
}
step_nonet() {
    timeout $(cap 200) python3 -m benchmarks.without_network --size 10980 --name without_network-gpu-machine 2>&1 \
        | tee "$OUT_DIR/without_network.log"
    cp benchmarks/results/without_network-gpu-machine.* "$OUT_DIR/" 2>/dev/null
}
step_overviews() {
    timeout $(cap 120) python3 -m benchmarks.overviews --width 10980 --height 4096 --pause 0.09 2>&1 \
        | tee "$OUT_DIR/overviews.log"
    cp benchmarks/results/overviews-pause.* "$OUT_DIR/" 2>/dev/null
}
step_training() {
    if ! python3 -c "import lightning" 2>/dev/null; then
        echo "training: skipped, lightning is not installed here (carry its wheel and its dependencies' in .whl/)" \
            | tee -a "$OUT_DIR/gpu.log"
        return
    fi
    timeout $(cap 180) python3 -m benchmarks.training_rate --device cuda 2>&1 | tee "$OUT_DIR/training.log"
    cp benchmarks/results/training_rate-cuda.* "$OUT_DIR/" 2>/dev/null
}
step_evaluate() {
    timeout $(cap 150) python3 -m benchmarks.evaluate_rate --device cuda --variant dsen2cr --patches 96 \
        --num-workers 4 --name evaluate_rate-cuda 2>&1 | tee "$OUT_DIR/evaluate_rate.log"
    cp benchmarks/results/evaluate_rate-cuda.* "$OUT_DIR/" 2>/dev/null
}
step_compile() {
    timeout $(cap 150) python3 -m benchmarks.windows_half --compiled 2>&1 | tee -a "$OUT_DIR/gpu.log"
    cp benchmarks/results/windows_half.* "$OUT_DIR/" 2>/dev/null
}

left() { echo $((BUDGET - SECONDS)); }
cap() { # a step's own limit, or the budget's end if sooner (at least 1 s: timeout 0 would mean none)
    local limit=$1 rest
    rest=$(left)
    if [ "$rest" -lt "$limit" ]; then limit=$rest; fi
    if [ "$limit" -lt 1 ]; then limit=1; fi
    echo "$limit"
}

scratch=$(mktemp -d)
for step in $STEPS; do
    if ! declare -F "step_$step" >/dev/null; then
        echo "unknown step: $step" | tee -a "$OUT_DIR/gpu.log"
        continue
    fi
    if [ "$(left)" -lt 30 ]; then
        echo "== step $step: skipped, $(left) s of the ${BUDGET} s budget left" | tee -a "$OUT_DIR/gpu.log"
        continue
    fi
    echo "== step $step ($(date +%T))" | tee -a "$OUT_DIR/gpu.log"
    "step_$step"
done
rm -rf "$scratch"
