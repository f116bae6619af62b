"""Shared helpers for the benchmarks: timing, table printing and result files."""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: Where the benchmarks write their results: ``benchmarks/results``, or the folder ``DSEN2CR_BENCHMARK_RESULTS`` names
#: (a rehearsal of the GPU run on the CPU writes elsewhere: tests/test_gpu_script.py).
RESULTS_DIR = Path(os.environ.get("DSEN2CR_BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")


def tiled_geotiff(left: float = 500000, pixel: float = 10) -> dict[str, Any]:
    """The creation options of the benchmarks' GeoTIFFs: UTM 32N, top edge at 5000000, ``pixel`` m pixels from the
    left edge ``left``, 512 px tiles, deflate (size, bands and type are each benchmark's)."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    return {
        "driver": "GTiff",
        "crs": CRS.from_epsg(32632),
        "transform": from_origin(left, 5000000, pixel, pixel),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def timed_into(function: Callable[..., Any], seconds: dict[str, float], name: str) -> Callable[..., Any]:
    """``function`` adding its wall time to ``seconds[name]`` (to wrap a project function a benchmark times)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    return wrapper


def machine_info() -> dict[str, object]:
    """Describe the machine the numbers come from."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def add_compression_arguments(parser: argparse.ArgumentParser, what: str = "the scene's COG") -> None:
    """``--compress`` and ``--compress-level`` as ``remove-clouds`` takes them."""
    from dsen2cr.choices import COG_COMPRESSION_LEVELS

    parser.add_argument(
        "--compress", choices=list(COG_COMPRESSION_LEVELS), default="deflate", help=f"{what} compression"
    )
    parser.add_argument("--compress-level", type=int, help="its level (default: GDAL's)")


def compression_suffix(compress: str, level: int | None) -> str:
    """A results-file suffix for a compression other than the default (``-zstd1``; empty for deflate at GDAL's
    level)."""
    return "" if (compress, level) == ("deflate", None) else f"-{compress}{level or ''}"


def report(name: str, rows: list[dict[str, object]], out: Path | None = None) -> Path:
    """Print ``rows`` as a Markdown table and write them, with the machine description, to JSON."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    table = "\n".join(lines)
    print(table)
    out = out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine_info(), "rows": rows}, indent=2) + "\n")
    tmp.replace(out)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out}")
    return out


def _fmt(value: object) -> str:
    """Format a table cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
