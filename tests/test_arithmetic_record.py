"""Every output names the arithmetic that computed it (``DSEN2CR_ARITHMETIC``): one precision's name computes
otherwise by form and device (bf16 on a CPU: oneDNN's bf16 convolutions, or their emulation in fp32, with the
residual stream, head and tail in IEEE fp32; the form a GPU builds keeps a 16-bit stream), and a resumed scene goes
on only in the arithmetic its windows were computed in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from dsen2cr.cli import main
from dsen2cr.models.dsen2cr import DSen2CR
from dsen2cr.precision import cpu_computes_bf16
from dsen2cr.predictor import predictor_from_model
from dsen2cr.weights import save_weights

#: The words of the CPU's 16-bit forms after their convolutions' words.
CPU_STREAM = "IEEE fp32 residual stream, head and tail"


def _model(*, uncertainty: str = "none") -> DSen2CR:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DSen2CR(num_blocks=2, num_features=16, include_sar=False, uncertainty=uncertainty).eval()


def _batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 2, (1, 13, 24, 20)).astype(np.float32)


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("fp32", "IEEE fp32"),
        ("fp16", f"fp16 convolutions emulated in fp32, {CPU_STREAM}"),  # oneDNN's fp16 was slower than fp32
        ("bf16", None),  # by oneDNN where this CPU computes bf16, else emulated
    ],
)
def test_a_predictor_names_the_arithmetic_of_its_first_batch(precision: str, expected: str | None) -> None:
    """IEEE fp32 eager is the reference itself; the CPU's 16-bit forms name who computes their convolutions and
    that the residual stream, head and tail stay IEEE fp32. The tag is what ran, known once the first batch ran."""
    predictor = predictor_from_model(_model(), device="cpu", precision=precision)
    predictor(_batch(), None)
    if expected is None:
        expected = f"bf16 convolutions {'by oneDNN' if cpu_computes_bf16() else 'emulated in fp32'}, {CPU_STREAM}"
    assert predictor.provenance()["DSEN2CR_ARITHMETIC"] == expected


def test_the_variance_is_computed_in_ieee_fp32_whatever_the_backend() -> None:
    """σ runs the model eagerly in the predictor's float32 arithmetic: its outputs say IEEE fp32 where the image's
    own backend would have been bf16."""
    predictor = predictor_from_model(_model(uncertainty="diag"), device="cpu", precision="fp32")
    predictor.predict_with_variance(_batch(), None)
    assert predictor.provenance(with_variance=True)["DSEN2CR_ARITHMETIC"] == "IEEE fp32"


def test_the_form_a_gpu_builds_names_its_16_bit_residual_stream() -> None:
    """The fused form built for CUDA keeps its residual stream 16-bit (issue #27 item 3 waits for the GPU's timing of
    the fp32 one): its words say so, and who computes its convolutions on each device."""
    from dsen2cr.models import family_of

    model = _model()
    fused = family_of(model.config).fused_half(model, "bf16")
    assert fused.arithmetic(torch.device("cuda")) == "bf16 convolutions by cuDNN, bf16 residual stream"
    assert fused.arithmetic(torch.device("cpu")) == "bf16 convolutions emulated in fp32, bf16 residual stream"


def test_the_cog_and_its_stac_item_name_the_arithmetic(workdir: Path) -> None:
    """``remove-clouds --precision fp16`` on a CPU: the COG's tag and its STAC item's lineage name the form."""
    scene, _ = workdir.scene()  # type: ignore[attr-defined]
    s2 = workdir / "T33UUU_20170216T102101.tif"  # a STAC item says when the scene was sensed: its name does
    shutil.copy(scene, s2)
    weights = save_weights(_model(), workdir / "nosar.safetensors")
    out, item = workdir / "out.tif", workdir / "out.json"
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(out), "--stac-item", str(item)]
    assert main([*argv, "--precision", "fp16", "--no-progress"]) == 0
    with rasterio.open(out) as dataset:
        words = dataset.tags()["DSEN2CR_ARITHMETIC"]
    assert words == f"fp16 convolutions emulated in fp32, {CPU_STREAM}"
    lineage = json.loads(item.read_text())["properties"]["processing:lineage"]
    assert f"precision fp16 ({words})" in lineage
