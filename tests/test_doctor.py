"""``dsen2cr doctor``: what it reports on this machine (checked against the libraries' own versions), on GPUs
that a test stands in for (what --precision auto picks by the documented rule: fp16 from compute capability 7.0,
TF32 from 8.0), and what it says is missing."""

from __future__ import annotations

import contextlib
import importlib.metadata
from types import SimpleNamespace

import pytest
import rasterio
import torch

import dsen2cr.machine as machine
from dsen2cr.cli import main


def _doctor(capsys: pytest.CaptureFixture) -> list[str]:
    capsys.readouterr()
    assert main(["doctor"]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_report_of_this_machine(capsys: pytest.CaptureFixture) -> None:
    lines = _doctor(capsys)
    text = "\n".join(lines)
    assert f"pytorch   {torch.__version__}" in text
    assert f"gdal      {rasterio.__gdal_version__} (rasterio {rasterio.__version__})" in text
    assert "device    cpu: --precision auto -> fp32 (IEEE)" in text
    assert "jpeg2000  JP2OpenJPEG" in text and "cog       COG driver, deflate" in text
    assert f"lightning {importlib.metadata.version('lightning')}: train, demo" in text
    assert f"machine   {machine.cores()} cores for this process" in text
    assert lines[-1] in ("nothing to fix", "1 thing to look at") or lines[-1].endswith("things to look at")


def test_gpus_and_what_auto_picks_on_them(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build seeing an Ampere GPU (8.0: fp16 under auto, TF32 and bf16 there) and a Pascal one (6.1:
    IEEE fp32, no TF32, no bf16)."""
    capability = {0: (8, 0), 1: (6, 1)}
    names = {0: "Stand-in A100", 1: "Stand-in P100"}
    current = [0]

    @contextlib.contextmanager
    def on(device: torch.device):  # type: ignore[no-untyped-def]
        current[0] = device.index
        yield

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[device.index])
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: SimpleNamespace(name=names[device.index], total_memory=40 * 2**30),
    )
    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: capability[current[0]] >= (8, 0))
    text = "\n".join(_doctor(capsys))
    assert "pytorch   " + torch.__version__ + ", CUDA 12.6" in text
    assert (
        "cuda:0: Stand-in A100, compute 8.0, 40.0 GiB: --precision auto -> fp16 (evaluate: fp32); tf32 yes, bf16 yes"
    ) in text
    assert (
        "cuda:1: Stand-in P100, compute 6.1, 40.0 GiB: --precision auto -> fp32 (evaluate: fp32); tf32 no, bf16 no"
        in text
    )


def test_what_is_missing_is_said_with_the_fix(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build that sees no GPU (CUDA_VISIBLE_DEVICES empty) is a line to look at, with what to check; a
    missing extra names the pip command that brings it."""
    version = importlib.metadata.version

    def without_s2cloudless(name: str) -> str:
        if name == "s2cloudless":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(importlib.metadata, "version", without_s2cloudless)
    lines = _doctor(capsys)
    gpu = [line for line in lines if line.startswith("! gpu")]
    assert gpu == [
        "! gpu       none visible to this CUDA build: CUDA_VISIBLE_DEVICES=''; check the driver (nvidia-smi), and in a "
        "container run it with --gpus all (docker) or --device nvidia.com/gpu=all (podman)"
    ]
    assert "  [masks]   s2cloudless not installed (pip install 'dsen2cr[masks]'): --mask s2cloudless" in lines
    assert lines[-1].endswith("to look at") and not lines[-1].startswith("0")


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("fpu sse avx2 avx512f amx_tile amx_bf16 avx512_bf16 avx512_fp16", "amx_bf16, avx512_bf16"),
        ("fpu sse avx2 avx512f", None),
    ],
)
def test_a_cpu_with_bf16_units_is_told_of_precision_bf16(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: object, flags: str, said: str | None
) -> None:
    """On a CPU whose flags name bf16 units (AMX, AVX512-BF16), --precision bf16 ran 4.8x IEEE fp32 at 12 DN p99 off
    it (benchmarks.cpu_precision) and nothing told a user of it; doctor says it, by the CPU's own flags."""
    from pathlib import Path

    info = Path(str(tmp_path)) / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(machine, "CPU_INFO", info)
    line = next(line.strip() for line in _doctor(capsys) if line.strip().startswith("device    cpu: "))
    if said is None:
        assert line == "device    cpu: --precision auto -> fp32 (IEEE)"
    else:
        assert line.startswith(f"device    cpu: --precision auto -> fp32 (IEEE); bf16 units ({said}): --precision bf16")
