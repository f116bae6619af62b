"""``dsen2cr doctor``: the install as the commands will find it. The versions, the GPUs PyTorch sees and what
``--precision auto`` picks on each (with TF32 and bf16), GDAL's JPEG 2000 driver (products' bands) and COG
compressions, the optional extras, and this process's share of the machine; what is missing is said with what to
do about it. Its lines are what a bug report needs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import dataclass

import rasterio
import torch

import dsen2cr.machine as machine
from dsen2cr.auto import auto_precision, has_tf32
from dsen2cr.errors import DSen2CRError
from dsen2cr.onednn import lowering_request
from dsen2cr.outputs.geotiff import cog_options
from dsen2cr.version import __version__

#: The optional extras: (extra, distribution, what it brings).
EXTRAS = (
    ("train", "lightning", "train, demo"),
    ("onnx", "onnxruntime", "export-onnx, ONNX weights, --backend onnxruntime"),
    ("masks", "s2cloudless", "--mask s2cloudless"),
    ("weights", "gdown", "weights download"),
    ("pc", "planetary-computer", "Planetary Computer assets whose token expired signed anew"),
    ("(any)", "imagecodecs", "COGs compressed while written; without it GDAL's copy at the end"),
)


@dataclass(frozen=True)
class Finding:
    """One line of the report: its topic, what was found and, where ``ok`` is False, what to do about it."""

    topic: str
    text: str
    ok: bool = True


def findings() -> list[Finding]:
    """Everything ``dsen2cr doctor`` reports, in its order."""
    return [_software(), *_pytorch(), *_gdal(), *_extras(), _machine()]


def _software() -> Finding:
    """dsen2cr and Python."""
    return Finding("dsen2cr", f"{__version__} on Python {platform.python_version()} ({platform.platform()})")


def _pytorch() -> list[Finding]:
    """PyTorch's build, the devices it sees and what ``--precision auto`` picks on each."""
    build = torch.version.cuda
    cpu = f"cpu: --precision auto -> {auto_precision(torch.device('cpu'))} (IEEE)"
    if bf16 := [unit for unit in machine.cpu_half_units() if "bf16" in unit]:
        cpu += (
            f"; bf16 units ({', '.join(bf16)}): --precision bf16 runs on them (on AMX 4.8x IEEE fp32, 12 DN off it at "
            "the 99th percentile: README, Measured results)"
        )
    found = [Finding("pytorch", f"{torch.__version__}" + (f", CUDA {build}" if build else ", a CPU build"))]
    if not build:
        found.append(
            Finding(
                "gpu",
                "none: this PyTorch is a CPU build, so every command runs on the CPU; for a GPU install PyTorch's "
                "CUDA build first (pip install torch --index-url https://download.pytorch.org/whl/cu126)",
                ok=not _gpu_driver_present(),
            )
        )
    elif not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f"CUDA_VISIBLE_DEVICES={visible!r}; " if visible is not None else ""
        found.append(
            Finding(
                "gpu",
                f"none visible to this CUDA build: {hint}check the driver (nvidia-smi), and in a container run it "
                "with --gpus all (docker) or --device nvidia.com/gpu=all (podman)",
                ok=False,
            )
        )
    if lowered := lowering_request():  # a Python process's: the command leaves it out before PyTorch loads
        cpu = (
            f"cpu: {'='.join(lowered)} asks oneDNN for {lowered[1].lower()} float32 arithmetic, read when PyTorch "
            "loaded: this process refuses work on the CPU; unset it before Python starts"
        )
    found.append(Finding("device", cpu, ok=lowered is None))
    found += [Finding("device", _gpu_line(index)) for index in range(torch.cuda.device_count() if build else 0)]
    return found


def _gpu_driver_present() -> bool:
    """Whether the machine has an NVIDIA driver (a CPU build of PyTorch on it leaves a GPU unused)."""
    return os.path.exists("/proc/driver/nvidia/version")


def _gpu_line(index: int) -> str:
    """A GPU: its name, compute capability and memory, what ``--precision auto`` picks there, TF32 and bf16."""
    device = torch.device("cuda", index)
    properties = torch.cuda.get_device_properties(device)
    major, minor = torch.cuda.get_device_capability(device)
    with torch.cuda.device(device):
        bf16 = torch.cuda.is_bf16_supported()
    return (
        f"cuda:{index}: {properties.name}, compute {major}.{minor}, {properties.total_memory / 2**30:.1f} GiB: "
        f"--precision auto -> {auto_precision(device)} (evaluate: fp32); tf32 {_yes(has_tf32(device))}, "
        f"bf16 {_yes(bf16)}"
    )


def _gdal() -> list[Finding]:
    """GDAL: its version, the JPEG 2000 driver that reads products' bands, the COG compressions it writes."""
    with rasterio.Env() as env:
        names = set(env.drivers())
    jp2 = sorted(name for name in names if name.startswith("JP2"))
    compressions = []
    for compression in ("deflate", "zstd"):
        try:
            cog_options(compression)
            compressions.append(compression)
        except DSen2CRError:
            pass
    found = [
        Finding("gdal", f"{rasterio.__gdal_version__} (rasterio {rasterio.__version__})"),
        Finding(
            "jpeg2000",
            ", ".join(jp2)
            if jp2
            else "no driver: SAFE products' bands cannot be read (GeoTIFFs can); install a "
            "rasterio wheel, whose GDAL has OpenJPEG",
            ok=bool(jp2),
        ),
        Finding("cog", "COG driver, " + " and ".join(compressions), ok="COG" in names and "deflate" in compressions),
    ]
    return found


def _extras() -> list[Finding]:
    """The optional extras: installed (with their version) or not, and what each brings."""
    found = []
    for extra, distribution, brings in EXTRAS:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is not None and importlib.util.find_spec(distribution) is None:
            version = None  # metadata left behind by an uninstall
        install = f"pip install 'dsen2cr[{extra}]'" if extra != "(any)" else f"pip install {distribution}"
        text = f"{distribution} {version}" if version else f"{distribution} not installed ({install})"
        found.append(Finding(f"[{extra}]" if extra != "(any)" else "codecs", f"{text}: {brings}"))
    return found


def _machine() -> Finding:
    """This process's share of the machine: cores, memory (and a container's or job's limit), shared memory."""
    limit = machine.memory_limit()
    within = f", a container's or job's limit of {limit[0] / 2**30:.1f} GiB" if limit else ""
    shared = machine.shared_memory_free()
    shm = f"; {machine.SHARED_MEMORY} {shared / 2**30:.1f} GiB free" if shared is not None else ""
    text = f"{machine.cores()} cores for this process, {machine.memory_bytes() / 2**30:.1f} GiB memory{within}{shm}"
    return Finding("machine", text)


def _yes(value: bool) -> str:
    return "yes" if value else "no"
