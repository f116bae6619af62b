#!/usr/bin/env bash
# Check the built image (make image-test): `dsen2cr --version` and `dsen2cr doctor` (the install inside it), then
# `remove-clouds` on the bundled real scene inside it (fresh small weights made there), and the output checked:
# 13 bands of uint16 in the scene's CRS and size, reflectance scale, provenance tags. Runs with docker or podman where one works, else buildah.
# Usage: scripts/test_image.sh [IMAGE]   (default: localhost/dsen2cr:cpu)
set -euo pipefail
IMAGE=${1:-localhost/dsen2cr:cpu}
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  run() { docker run --rm --entrypoint "$1" "$IMAGE" "${@:2}"; }
elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
  run() { podman run --rm --entrypoint "$1" "$IMAGE" "${@:2}"; }
else
  container=$(buildah from "$IMAGE")
  trap 'buildah rm "$container" >/dev/null' EXIT
  run() { buildah run --isolation chroot --user dsen2cr "$container" -- "$@"; }
fi
run dsen2cr --version
run dsen2cr doctor
run bash -c '
set -euo pipefail
cd "$(mktemp -d)"
dsen2cr data sample --out sample >/dev/null
python -c "from dsen2cr import create_model; from dsen2cr.weights import save_weights; save_weights(create_model(\"dsen2cr-small-nosar\"), \"w.safetensors\")"
dsen2cr remove-clouds --weights w.safetensors --s2 sample/scene/*.tif --out out.tif --mask-out mask.tif --no-progress
python - <<PY
import rasterio
with rasterio.open("out.tif") as out:
    assert (out.count, out.dtypes[0], out.crs.to_epsg(), out.shape) == (13, "uint16", 32633, (768, 640)), out.profile
    assert out.scales[0] == 1e-4 and out.tags()["DSEN2CR_MODEL"].startswith("dsen2cr"), out.tags()
    assert out.read(4).max() > 0
with rasterio.open("mask.tif") as mask:
    assert mask.dtypes[0] == "uint8" and mask.nodata == 255
print("image-test: remove-clouds on the bundled scene inside the image: output checked")
PY
'
