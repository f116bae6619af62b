#!/usr/bin/env bash
# The wheels the GPU machine lacks, for its Python, into .whl/ (ignored by git: name it in the device run's carry).
#   scripts/gpu_wheels.sh [PYTHON_VERSION]   (default 3.12, the device image's; see the device notes)
# That image has PyTorch, Lightning, SciPy, h5py, Pillow, tqdm, safetensors, ... but not rasterio (nor its small
# dependencies affine, cligj, click-plugins) and not imagecodecs (the COG compressed while it is written). The
# working tree and the carried paths travel together under 64 MiB, and rasterio's wheel alone is ~36 MB: so the
# imagecodecs wheel (~27 MB, some 50 codecs) is cut down to what outputs/cog_stream.py uses, deflate and zstd
# (~3 MB), as a valid wheel (its RECORD rewritten). The versions are those installed here, else the newest.
# Then: run(command="scripts/gpu_benchmark.sh", carry=[".whl"]) — the script installs them under /tmp/site.
set -eu
python_version=${1:-3.12}
dest=.whl
mkdir -p "$dest"
exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || true)
if [ -n "$exclude" ]; then
    mkdir -p "$(dirname "$exclude")"
    grep -qsx '/.whl/' "$exclude" || echo /.whl/ >>"$exclude"
fi

pinned() {  # NAME==VERSION as installed here, else NAME
    local version
    version=$(python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
    echo "$1${version:+==$version}"
}
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$1" "${@:2}"
}
download "$dest" "$(pinned rasterio)" "$(pinned affine)" "$(pinned cligj)" "$(pinned click-plugins)"
full=$(mktemp -d)
download "$full" "$(pinned imagecodecs)"
rm -f "$dest"/imagecodecs-*.whl
python3 - "$full"/imagecodecs-*.whl "$dest" <<'EOF'
"""Copy an imagecodecs wheel keeping its Python files and only the deflate and zstd extensions (with the modules
they and the package's import need, and their two libraries); RECORD lists what is kept, with hashes."""
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
extensions = {"_shared", "_shared_cython", "_imcd", "_deflate", "_zstd"}
libraries = ("libdeflate-", "libzstd-")


def kept(name: str) -> bool:
    folder, _, file = name.rpartition("/")
    if folder == "imagecodecs.libs":
        return file.startswith(libraries)
    if file.endswith(".so"):
        return re.sub(r"\..*", "", file) in extensions
    return not file == "RECORD"


with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(dest / source.name, "w", zipfile.ZIP_DEFLATED) as slim:
    record_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    lines = []
    for info in wheel.infolist():
        if not kept(info.filename):
            continue
        data = wheel.read(info)
        slim.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{info.filename},sha256={digest},{len(data)}")
    slim.writestr(record_name, "\n".join([*lines, f"{record_name},,"]) + "\n")
print(f"{dest / source.name}: {(dest / source.name).stat().st_size / 1e6:.1f} MB (from {source.stat().st_size / 1e6:.1f})")
EOF
rm -rf "$full"
du -ch "$dest"/*.whl | tail -1
