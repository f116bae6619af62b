"""What ``remove-clouds --bounds`` saves: a part of a scene against the whole scene, in one process.

One synthetic scene (the bundled real L1C scene mirrored across the grid), one model without SAR: a warm-up run,
then the whole scene and a centred square of a quarter and of an eighth of its side (1/16 and 1/64 of its
pixels), plain and with ``--keep-clear --mask-out`` (whose paper mask takes its shadow thresholds from the whole
scene, so a part still reads three bands of all of it once). Each run is timed whole (read, predict, write, COG);
the network's pixels are those of the planned windows (a part's windows read half the overlap around it).

``--remote``: the scene as a STAC item whose 13 band COGs (deflate, 512 px blocks, with overviews) an HTTP server
on 127.0.0.1 serves by byte ranges, as object stores do; the bytes and requests it answers are counted, for the
whole scene and parts of a quarter and an eighth of its side, the eighth also with ``--mask-out`` and the mask's
statistics of the scene or of the part (``--mask-statistics area``) (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``, as
COG readers set it: GDAL lists no folder on the server).

Run: ``python -m benchmarks.bounds [--device cuda] [--size 4096] [--variant dsen2cr-nosar] [--remote]``
(writes benchmarks/results/bounds[-cuda][-remote].json and .md).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import rasterio
import torch
from rasterio.windows import Window

from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr import auto, create_model
from dsen2cr.predictor import predictor_from_model
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.scene.tiles import plan_area_tiles, planned_pixels
from dsen2cr.settings import SceneJob, SceneSettings


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, help="scene width and height (default: 10980 on cuda, 2048 on cpu)")
    parser.add_argument("--variant", help="model without SAR (default: dsen2cr-nosar on cuda, small on cpu)")
    parser.add_argument("--remote", action="store_true", help="read the scene over HTTP from a STAC item's COGs")
    args = parser.parse_args()
    size = args.size or (10980 if args.device == "cuda" else 2048)
    variant = args.variant or ("dsen2cr-nosar" if args.device == "cuda" else "dsen2cr-small-nosar")
    predictor = predictor_from_model(create_model(variant).eval(), device=args.device)
    if args.remote:
        report("bounds-remote", remote_rows(predictor, size, variant))
        return
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "s2.tif"
        write_scene(scene, size, 13, "uint16", seed=0, texture="sample")
        with rasterio.open(scene) as dataset:
            west, _, east, north = dataset.bounds
        remove_clouds(
            predictor,
            SceneJob(str(scene), None, folder / "warm.tif"),
            SceneSettings(progress=False, device=args.device),
        )
        whole = {}
        for fraction in (1, 4, 8):
            side = size // fraction
            first = (size - side) // 2
            step = (east - west) / size
            bounds = (
                None
                if fraction == 1
                else (
                    west + first * step,
                    north - (first + side) * step,
                    west + (first + side) * step,
                    north - first * step,
                )
            )
            for masks in (False, True):
                settings = SceneSettings(progress=False, device=args.device, bounds=bounds, keep_clear=masks)
                out = folder / f"out{fraction}{masks}.tif"
                job = SceneJob(str(scene), None, out, mask_out=out.with_suffix(".mask.tif") if masks else None)
                plan = auto.plan_scene_run(settings, predictor.config, device=predictor.device)
                tiles = plan_area_tiles(size, size, Window(first, first, side, side), plan.tile, plan.overlap)
                start = time.perf_counter()
                remove_clouds(predictor, job, plan)
                total = time.perf_counter() - start
                name = "--keep-clear --mask-out" if masks else "plain"
                whole.setdefault(name, total)
                part = "whole scene" if fraction == 1 else f"--bounds of {side}x{side} px (1/{fraction**2} of it)"
                note = f"{total / whole[name]:.3f}x the whole scene; network over {planned_pixels(tiles) / 1e6:.2f} Mpx"
                measure = f"{size}x{size} scene, {variant}, {name}: {part}"
                rows.append({"measure": measure, "value": total, "unit": "s", "note": note})
                for path in folder.glob(f"{out.stem}*"):
                    path.unlink()
    report("bounds" + ("-cuda" if args.device == "cuda" else ""), rows)


#: Earth Search's asset keys of the 13 L1C bands, in band order.
EARTH_SEARCH_KEYS = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "cirrus",
    "swir16", "swir22",
)  # fmt: skip


class _RangeServer(http.server.SimpleHTTPRequestHandler):
    """Files served by single byte ranges (as object stores serve them), the bytes and requests counted."""

    counts: ClassVar[dict[str, int]] = {"bytes": 0, "requests": 0}

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_HEAD(self) -> None:
        """Size and range support of a file."""
        self._answer(body=False)

    def do_GET(self) -> None:
        """A file, or the range of it asked for."""
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        _RangeServer.counts["requests"] += 1
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")) if body else None
        start, end = (int(asked[1]), min(size - 1, int(asked[2] or size - 1))) if asked else (0, size - 1)
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(end - start + 1 if body else size))
        self.send_header("Accept-Ranges", "bytes")
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            with path.open("rb") as file:
                file.seek(start)
                self.wfile.write(file.read(end - start + 1))
            _RangeServer.counts["bytes"] += end - start + 1


def remote_rows(predictor: object, size: int, variant: str) -> list[dict[str, object]]:
    """The whole scene and centred parts of a quarter and an eighth of its side, read from a STAC item over HTTP."""
    rows: list[dict[str, object]] = []
    os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_scene(folder / "scene.tif", size, 13, "uint16", seed=0, texture="sample")
        with rasterio.open(folder / "scene.tif") as scene:
            profile = {**scene.profile, "driver": "COG", "count": 1, "compress": "deflate", "nodata": 0}
            for key in ("blockxsize", "blockysize", "tiled", "interleave"):
                profile.pop(key, None)
            west, _, east, north = scene.bounds
            for band, key in enumerate(EARTH_SEARCH_KEYS, start=1):
                with rasterio.open(folder / f"{key}.tif", "w", **profile) as cog:
                    cog.write(scene.read(band), 1)
        stored = sum((folder / f"{key}.tif").stat().st_size for key in EARTH_SEARCH_KEYS)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeServer, directory=tmp))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assets = {
            key: {"href": f"{base}/{key}.tif", "eo:bands": [{"name": band}]}
            for key, band in zip(EARTH_SEARCH_KEYS, S2_BANDS, strict=True)
        }
        item = {"type": "Feature", "id": "remote", "properties": {"s2:processing_baseline": "02.14"}, "assets": assets}
        (folder / "item.json").write_text(json.dumps(item))
        step = (east - west) / size
        runs: list[tuple[str, tuple[float, float, float, float] | None, str | None]] = [("whole scene", None, None)]
        for fraction in (4, 8):
            side = size // fraction
            first = (size - side) // 2
            part = (
                west + first * step,
                north - (first + side) * step,
                west + (first + side) * step,
                north - first * step,
            )
            runs.append((f"--bounds of {side}x{side} px (1/{fraction**2} of it)", part, None))
        name, part, _ = runs[-1]
        runs.append((f"{name}, --mask-out (the scene's mask statistics)", part, "scene"))
        runs.append((f"{name}, --mask-out --mask-statistics area", part, "area"))
        try:
            for name, bounds, statistics in runs:
                _RangeServer.counts.update(bytes=0, requests=0)
                mask_out = folder / "mask.tif" if statistics else None
                job = SceneJob(f"{base}/item.json", None, folder / "out.tif", mask_out=mask_out)
                settings = SceneSettings(
                    progress=False, bounds=bounds, overwrite=True, mask_statistics=statistics or "scene"
                )
                start = time.perf_counter()
                remove_clouds(predictor, job, settings)  # type: ignore[arg-type]
                total = time.perf_counter() - start
                fetched, requests = _RangeServer.counts["bytes"], _RangeServer.counts["requests"]
                share = f"{fetched / stored:.3f} of the COGs' {stored / 1e6:.1f} MB"
                note = f"{fetched / 1e6:.1f} MB fetched in {requests} requests, {share}"
                rows.append(
                    {
                        "measure": f"{size}x{size} STAC item over HTTP, {variant}: {name}",
                        "value": total,
                        "unit": "s",
                        "note": note,
                    }
                )
        finally:
            server.shutdown()
    return rows


if __name__ == "__main__":
    main()
