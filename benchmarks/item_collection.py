"""What reading the items of a STAC ItemCollection costs: each item is read several times (its bands, its time, its
files), and the collection's file is parsed once per process (the tool) or, as before, once per read (the parse
cache cleared before each read, in the same run).

A synthetic collection of ``--items`` Level-1C items (13 band assets by URL, 20 kB of properties each), every item
read ``--reads`` times by its ``items.json#ID`` reference.

Run: ``python -m benchmarks.item_collection [--items 400] [--reads 3]``
(writes benchmarks/results/item_collection.json and .md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import report
from dsen2cr.inputs import stac
from dsen2cr.preprocessing import S2_BANDS


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--reads", type=int, default=3)
    args = parser.parse_args()
    codes = [band.replace("B", "B0") if len(band) == 2 else band for band in S2_BANDS]
    features = [
        {
            "type": "Feature",
            "id": f"S2B_MSIL1C_{index:04d}",
            "properties": {"datetime": "2023-06-10T10:15:59Z", "s2:product_type": "S2MSI1C", "notes": "x" * 20000},
            "assets": {code: {"href": f"https://host/{index}/{code}.tif"} for code in codes},
        }
        for index in range(args.items)
    ]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        references = stac.collection_items(str(path))
        for way, clear in (("parsed once (the tool)", False), ("parsed at every read", True)):
            stac._parsed.cache_clear()
            start = time.perf_counter()
            for reference in references:
                for _ in range(args.reads):
                    if clear:
                        stac._parsed.cache_clear()
                    stac.stac_s2(reference)
            seconds = time.perf_counter() - start
            size_mb = round(path.stat().st_size / 2**20, 1)
            rows.append({"way": way, "seconds": seconds, "items": args.items, "reads": args.reads, "MB": size_mb})
    report("item_collection", rows)


if __name__ == "__main__":
    main()
