"""Peak working memory of the network on one window, eager and compiled, against the estimate that
``--tile auto`` uses (``dsen2cr.auto.window_bytes``).

Each case runs in a fresh process: one untimed call (compiling, for the compiled backend), then the peak
resident memory above the level before the measured call, sampled every 2 ms.

Run: ``python -m benchmarks.window_memory`` (writes benchmarks/results/window_memory.json and .md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from benchmarks.common import report

CASES = (("dsen2cr", 384), ("dsen2cr-small", 768))


def _resident_mib() -> float:
    """Current resident memory of this process (MiB)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(variant: str, backend: str, size: int) -> dict[str, object]:
    """Peak memory above the starting level during one forward pass on a size x size window."""
    from dsen2cr import create_model
    from dsen2cr.auto import window_bytes
    from dsen2cr.backends import build_backend

    model = create_model(variant).eval()
    predict = build_backend(model, backend)
    rng = np.random.default_rng(0)
    s2 = rng.uniform(0, 1, (1, 13, size, size)).astype(np.float32)
    s1 = rng.uniform(0, 1, (1, 2, size, size)).astype(np.float32)
    predict(s2, s1)
    before = _resident_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_mib())
            time.sleep(0.002)

    watcher = threading.Thread(target=sample)
    watcher.start()
    predict(s2, s1)
    done.set()
    watcher.join()
    feature_map = size * size * model.config.num_features * 4 / 2**20
    estimate = window_bytes(model.config, size, size) / 2**20
    return {
        "variant": variant,
        "backend": backend,
        "window": f"{size}x{size}",
        "peak_MiB": peak[0] - before,
        "feature_maps": (peak[0] - before) / feature_map,
        "estimate_MiB": estimate,
        "within_estimate": peak[0] - before <= estimate,
    }


def main() -> None:
    """Run every case in its own process and report."""
    if len(sys.argv) == 4:
        print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
        return
    rows = []
    for variant, size in CASES:
        for backend in ("eager", "compiled"):
            command = [sys.executable, "-m", "benchmarks.window_memory", variant, backend, str(size)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    report("window_memory", rows)


if __name__ == "__main__":
    main()
