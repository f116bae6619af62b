#!/usr/bin/env bash
# The GPU run (issue #16), as one script for a machine with a CUDA PyTorch: run it from the repository root.
#   [STEPS="cli benchmark ..."] scripts/gpu_benchmark.sh [OUT_DIR]   (default OUT_DIR: $OUT, else benchmarks/results)
# Steps (default: all but compile):
#   cli        the CLI on the bundled scene with the paper-size model on cuda (--backend auto, --tile auto), logged;
#   benchmark  python -m benchmarks --device cuda --scene-size 10980 (a full Sentinel-2 tile, synthetic);
#   cog        python -m benchmarks.cog_copy: the final COG copy alone, on this machine's CPUs and disk;
#   fused      bf16 under autocast against the fused bf16 network (the bf16 backend on CUDA), one batch of windows;
#   pipeline   python -m benchmarks.pipeline: three 10980x4096 scenes, one run against one at a time;
#   compile    bf16 eager against bf16 compiled on one batch of the scene's windows.
# Wheels in .whl/ (e.g. rasterio for a machine without it) are installed under /tmp/site first.
set -u
OUT_DIR=${1:-${OUT:-benchmarks/results}}
STEPS=${STEPS:-cli benchmark cog fused pipeline}
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.log"
python3 -c "import torch, rasterio; print('torch', torch.__version__, 'rasterio', rasterio.__version__)" \
    | tee -a "$OUT_DIR/gpu.log"

scratch=$(mktemp -d)
if want cli; then
python3 - "$scratch" <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu.log"
import sys
from dsen2cr import create_model
from dsen2cr.weights import save_weights
save_weights(create_model("dsen2cr-nosar"), f"{sys.argv[1]}/paper-nosar.safetensors")
EOF
TIMEFORMAT="cli remove-clouds, whole process: %R s"
time timeout 120 python3 -m dsen2cr.cli -v remove-clouds --weights "$scratch/paper-nosar.safetensors" --device cuda \
    --s2 src/dsen2cr/sample_data/scene/T33UUU_20170216T102101_L1C_10m.tif --out "$scratch/scene.tif" \
    --no-progress 2>&1 | tee -a "$OUT_DIR/gpu.log"
fi

if want benchmark; then
    timeout 300 python3 -m benchmarks --device cuda --scene-size 10980 2>&1 | tee "$OUT_DIR/benchmark-cuda.log"
    cp benchmarks/results/benchmark-cuda.* "$OUT_DIR/" 2>/dev/null
fi
if want cog; then
    timeout 150 python3 -m benchmarks.cog_copy --name cog_copy-gpu-machine 2>&1 | tee "$OUT_DIR/cog_copy.log"
    cp benchmarks/results/cog_copy-gpu-machine.* "$OUT_DIR/" 2>/dev/null
fi

if want pipeline; then
    timeout 240 python3 -m benchmarks.pipeline --device cuda --scenes 3 --width 10980 --height 4096 \
        --variant dsen2cr 2>&1 | tee "$OUT_DIR/pipeline.log"
    cp benchmarks/results/pipeline-cuda.* "$OUT_DIR/" 2>/dev/null
fi

if want fused; then timeout 100 python3 - <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu.log"
import numpy as np, torch
from benchmarks.common import median_seconds
from benchmarks.__main__ import patch_flops
from dsen2cr import create_model
from dsen2cr.auto import auto_tile
from dsen2cr.backends import _channels_last, build_backend, relative_error
from dsen2cr.scene import default_overlap, plan_tiles
model = create_model("dsen2cr").eval()
device = torch.device("cuda")
tile = auto_tile(model.config, device=device, batch_size=4)
window = plan_tiles(10980, 10980, tile, default_overlap(model))[0].window
rng = np.random.default_rng(0)
s2 = rng.uniform(0, 2, (4, 13, window.height, window.width)).astype(np.float32)
s1 = rng.uniform(0, 2, (4, 2, window.height, window.width)).astype(np.float32)
flop = patch_flops(model, 1) * 4 * window.height * window.width
fp32 = build_backend(model, "eager", device)(s2, s1)
for name, predict in (("bf16 autocast", _channels_last(model, device, compile_model=False, bf16=True)),
                      ("bf16 fused (backend bf16)", build_backend(model, "bf16", device))):
    seconds = median_seconds(lambda: predict(s2, s1), repeats=5)
    print(f"4 windows {window.height}x{window.width}, {name}: {seconds:.3f} s, {flop / seconds / 1e12:.1f} TFLOP/s, "
          f"rel. error vs fp32 {relative_error(predict(s2, s1), fp32):.2e}", flush=True)
EOF
fi

if want compile; then timeout 100 python3 - <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu.log"
import time
import numpy as np, torch
from benchmarks.common import median_seconds
from dsen2cr import create_model
from dsen2cr.auto import auto_tile
from dsen2cr.backends import _channels_last, build_backend, relative_error
from dsen2cr.scene import default_overlap, plan_tiles
model = create_model("dsen2cr").eval()
device = torch.device("cuda")
tile = auto_tile(model.config, device=device, batch_size=4)
window = plan_tiles(10980, 10980, tile, default_overlap(model))[0].window
rng = np.random.default_rng(0)
s2 = rng.uniform(0, 2, (4, 13, window.height, window.width)).astype(np.float32)
s1 = rng.uniform(0, 2, (4, 2, window.height, window.width)).astype(np.float32)
bf16 = build_backend(model, "bf16", device)
eager_s = median_seconds(lambda: bf16(s2, s1), repeats=3)
start = time.perf_counter()
compiled = _channels_last(model, device, compile_model=True, bf16=True)
reference = compiled(s2, s1)
build = time.perf_counter() - start
compiled_s = median_seconds(lambda: compiled(s2, s1), repeats=3)
print(f"4 windows {window.height}x{window.width}: bf16 eager {eager_s:.3f} s, bf16 compiled {compiled_s:.3f} s "
      f"(build {build:.0f} s), ratio {eager_s / compiled_s:.2f}, rel. error {relative_error(reference, bf16(s2, s1)):.2e}")
EOF
fi
rm -rf "$scratch"
