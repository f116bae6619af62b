"""Precision is what it says on every device (issue #27): IEEE fp32 set for the call and restored, tf32 and
bf16 named choices, auto stated, and every output records what computed it and its distance to IEEE fp32."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from dsen2cr import create_model
from dsen2cr.auto import resolve_precision
from dsen2cr.errors import DSen2CRError
from dsen2cr.precision import float32_arithmetic, float32_mode
from dsen2cr.predictor import predictor_from_model


def _inputs() -> tuple[np.ndarray, None]:
    return np.random.default_rng(0).uniform(0, 1, (1, 13, 40, 40)).astype(np.float32), None


def test_fp32_means_ieee_convolutions_and_matmuls_inside_the_call_and_restores_them() -> None:
    """PyTorch leaves cuDNN convolutions on TF32 by default: the flags read inside the network's forward are
    IEEE for --precision fp32, and what they were before once the call returns (checked on the CPU: the same
    flags govern the GPU)."""
    model = create_model("dsen2cr-small-nosar").eval()
    seen: list[dict[str, str]] = []
    forward = model.forward

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(float32_mode())
        return forward(*args, **kwargs)

    model.forward = recording  # type: ignore[method-assign]
    predictor = predictor_from_model(model, backend="eager", device="cpu", precision="fp32")
    with float32_arithmetic("tf32"):  # PyTorch's default for convolutions (what the issue found on the H200)
        before = float32_mode()
        predictor(*_inputs())
        assert float32_mode() == before
    assert seen and all(flags == {"cudnn.conv": "ieee", "cuda.matmul": "ieee"} for flags in seen)
    assert predictor.precision == "fp32" and predictor.check_dn == (0.0, 0.0)


def test_tf32_flags_are_set_for_the_call_and_restored() -> None:
    before = float32_mode()
    with float32_arithmetic("tf32"):
        assert set(float32_mode().values()) == {"tf32"}
    with pytest.raises(RuntimeError), float32_arithmetic("ieee"):
        assert set(float32_mode().values()) == {"ieee"}
        raise RuntimeError("an error inside the call")
    assert float32_mode() == before


def _pytorch_before_2_9() -> object:
    """torch.backends as PyTorch 2.1 to 2.8 have it: only the legacy flags, cuDNN convolutions on TF32 and matmuls
    on IEEE fp32 by default."""
    from types import SimpleNamespace

    return SimpleNamespace(
        cudnn=SimpleNamespace(allow_tf32=True), cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False))
    )


def test_fp32_is_ieee_with_a_pytorch_that_has_only_the_legacy_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package allows torch 2.1 on; before 2.9 there is no ``fp32_precision`` and cuDNN's TF32 is the legacy
    ``torch.backends.cudnn.allow_tf32`` (True by default): fp32 must clear it for the call, tf32 set it, and the
    values a user had come back afterwards (also on an error)."""
    import dsen2cr.precision as precision

    old = _pytorch_before_2_9()
    monkeypatch.setattr(precision, "_backends", lambda: old)
    assert float32_mode() == {"cudnn.conv": "tf32", "cuda.matmul": "ieee"}
    with float32_arithmetic("ieee"):
        assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (False, False)  # type: ignore[attr-defined]
        assert float32_mode() == {"cudnn.conv": "ieee", "cuda.matmul": "ieee"}
    with pytest.raises(RuntimeError), float32_arithmetic("tf32"):
        assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (True, True)  # type: ignore[attr-defined]
        raise RuntimeError("an error inside the call")
    assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (True, False)  # type: ignore[attr-defined]
    with precision.training_arithmetic("highest"):  # a training run of the paper config
        assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (False, False)  # type: ignore[attr-defined]


def test_auto_and_named_precisions_per_device(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto: IEEE fp32 on a CPU and for exact results; fp16 on a GPU with fp16 tensor cores (compute capability
    7.0 on), IEEE fp32 on older ones (which multiply fp16 no faster); tf32 on a CPU is said to be fp32."""
    import dsen2cr.auto

    capability = (9, 0)  # an H200
    monkeypatch.setattr(dsen2cr.auto, "_capability", lambda device: capability)
    monkeypatch.setattr(dsen2cr.auto, "device_name", lambda device: "NVIDIA H200" if device.type == "cuda" else "cpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with caplog.at_level("INFO", logger="dsen2cr"):
        assert resolve_precision("auto", cpu) == "fp32"
        assert resolve_precision("auto", cuda) == "fp16"  # p99 6 DN from float64; bf16's 51 DN keeps it named
        assert resolve_precision("auto", cuda, exact=True) == "fp32"  # evaluate's metrics
        assert resolve_precision("tf32", cpu) == "fp32"  # stated, not refused
        assert resolve_precision("bf16", cpu) == "bf16"
        assert resolve_precision("fp16", cpu) == "fp16"
        capability = (6, 1)  # a Pascal GPU: no tensor cores
        assert resolve_precision("auto", cuda) == "fp32"
    assert "precision: tf32 on cpu is IEEE fp32 (TF32 exists on NVIDIA GPUs from Ampere on)" in caplog.text
    assert "precision: fp16 (auto on NVIDIA H200" in caplog.text
    with pytest.raises(DSen2CRError, match="an ONNX file runs the precision it was exported in"):
        resolve_precision("bf16", cpu, onnx=True)
    with pytest.raises(DSen2CRError, match="--precision: expected one of auto, fp32, tf32, fp16, bf16, got 'fp8'"):
        resolve_precision("fp8", cpu)


def test_tf32_on_a_gpu_without_it_is_said_to_be_ieee_fp32(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TF32 exists from Ampere (compute capability 8.0) on: a V100 computes IEEE fp32 whatever the flags say, so
    the output must record fp32, not tf32."""
    import dsen2cr.auto
    from dsen2cr.auto import float32_mode_of

    monkeypatch.setattr(dsen2cr.auto, "_capability", lambda device: (7, 0))
    monkeypatch.setattr(dsen2cr.auto, "device_name", lambda device: "Tesla V100-SXM2-16GB")
    with caplog.at_level("INFO", logger="dsen2cr"):
        assert resolve_precision("tf32", torch.device("cuda")) == "fp32"
        assert resolve_precision("auto", torch.device("cuda")) == "fp16"  # fp16 tensor cores from Volta on
    assert float32_mode_of("fp16", torch.device("cuda")) == "ieee"  # fp16's fall back computes (and says) fp32
    monkeypatch.setattr(dsen2cr.auto, "_capability", lambda device: (9, 0))
    assert float32_mode_of("fp16", torch.device("cuda")) == "tf32"
    assert "precision: tf32 on Tesla V100-SXM2-16GB is IEEE fp32 (TF32 exists on NVIDIA GPUs from Ampere on)" in (
        caplog.text
    )


def test_a_named_float32_backend_keeps_auto_precision_in_float32(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--backend eager (or compiled) on a GPU names a float32 backend: auto is then TF32 (as before fp16 became
    the GPU's default), IEEE fp32 on a GPU without TF32; only --backend auto lets auto pick fp16."""
    import dsen2cr.auto

    capability = (9, 0)
    monkeypatch.setattr(dsen2cr.auto, "_capability", lambda device: capability)
    monkeypatch.setattr(dsen2cr.auto, "device_name", lambda device: "NVIDIA H200")
    cuda = torch.device("cuda")
    with caplog.at_level("INFO", logger="dsen2cr"):
        assert resolve_precision("auto", cuda, backend="eager") == "tf32"
        assert resolve_precision("auto", cuda, backend="compiled") == "tf32"
        assert resolve_precision("auto", cuda, backend="auto") == "fp16"
        assert resolve_precision("fp16", cuda, backend="eager") == "fp16"  # named: the fp16 backend, as bf16
        capability = (7, 0)
        assert resolve_precision("auto", cuda, backend="eager") == "fp32"
    assert "precision: tf32 (auto on NVIDIA H200 with --backend eager" in caplog.text


def test_fp16_that_auto_chose_is_strict_only_when_named() -> None:
    """fp16 under auto may fall back (to TF32 eager, its float32 mode); named, its failure is an error."""
    from dsen2cr.auto import plan_backend
    from dsen2cr.precision import FLOAT32_MODES

    cuda = torch.device("cuda")
    assert plan_backend("auto", "fp16", None, cuda) == (("fp16",), False)
    assert plan_backend("auto", "fp16", None, cuda, named_precision=True) == (("fp16",), True)
    assert plan_backend("auto", "bf16", None, cuda) == (("bf16",), True)
    assert FLOAT32_MODES["fp16"] == "tf32"


def test_a_float32_backend_named_beside_a_16_bit_precision_is_said_to_be_left_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``--precision bf16 --backend compiled``: a named 16-bit precision runs its own backend (bf16), so the named
    backend is not used; it was left aside without a word (the output said backend bf16). A warning says it."""
    from dsen2cr.auto import plan_backend

    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="dsen2cr"):
        assert plan_backend("compiled", "bf16", None, cpu, named_precision=True) == (("bf16",), True)
        assert plan_backend("auto", "fp16", None, cpu, named_precision=True) == (("fp16",), True)
    assert caplog.messages == ["--backend compiled is not used: --precision bf16 runs its own backend, bf16"]


def test_an_exact_run_in_a_named_16_bit_precision_has_no_backend_to_leave_aside(
    caplog: pytest.LogCaptureFixture, weights_file: Callable[[str], Path]
) -> None:
    """``evaluate --precision bf16`` names no backend: its predictor (eager where exact) runs bf16's own, with no
    warning of a --backend the user never gave."""
    from dsen2cr.predictor import load_exact_predictor

    with caplog.at_level("WARNING", logger="dsen2cr"):
        predictor = load_exact_predictor(weights_file("dsen2cr-small"), device="cpu", precision="bf16")
    assert predictor.backend == "bf16" and caplog.messages == []


def test_fp16_that_overflows_falls_back_to_tf32_eager_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A model whose features pass fp16's largest value (65504) computes infinities in fp16: the first batch's
    check drops it, the run continues in TF32 eager (IEEE fp32 here, on a CPU) and records tf32, with finite
    predictions equal to the model's."""
    from dsen2cr.backends import CheckedBackend
    from dsen2cr.predictor import Predictor

    model = create_model("dsen2cr-small-nosar").eval()
    with torch.no_grad():
        model.head.weight.mul_(1e6)  # features near 1e5 and more: past fp16's range, well within fp32's
    s2, s1 = _inputs()
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(s2).double()).numpy()
    model.float()
    checked = CheckedBackend(model, torch.device("cpu"), ["fp16", "eager"], strict=False, float32="tf32")
    predictor = Predictor(checked, model.config, torch.device("cpu"), "tf32")
    with caplog.at_level("INFO", logger="dsen2cr"):
        got = predictor(s2, s1)
    assert "backend fp16 (fp16) disagrees with IEEE fp32 eager on the first batch" in caplog.text
    assert predictor.precision == "tf32" and predictor.backend == "eager"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", "fp32"), ("tf32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")]
)
def test_the_output_records_what_computed_it(
    workdir: Path, weights_file: Callable[[str], Path], precision: str, expected: str
) -> None:
    """DSEN2CR_PRECISION and the first batch's measured distance to IEEE fp32 in DN: 0 for IEEE fp32 eager,
    a few DN for fp16 and bf16 (autocast on the CPU)."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    out = workdir / f"{precision}.tif"
    argv = ["remove-clouds", "--weights", str(weights_file("dsen2cr-small-nosar")), "--s2", str(s2), "--out"]
    assert main([*argv, str(out), "--precision", precision, "--device", "cpu", "--no-progress"]) == 0
    with rasterio.open(out) as dataset:
        tags = dataset.tags()
    assert tags["DSEN2CR_PRECISION"] == expected
    assert tags["DSEN2CR_BACKEND"] == (precision if precision in ("fp16", "bf16") else "eager")
    p99, worst = float(tags["DSEN2CR_CHECK_P99_DN"]), float(tags["DSEN2CR_CHECK_MAX_DN"])
    if expected == "fp32":
        assert (p99, worst) == (0.0, 0.0)
    else:
        assert 0 < p99 <= worst < 500


def test_paper_config_trains_in_ieee_fp32() -> None:
    """trainer.matmul_precision highest (the paper config) sets convolutions to IEEE too; high is TF32."""
    from dsen2cr.config import load_config
    from dsen2cr.precision import training_float32

    assert load_config("paper").trainer.matmul_precision == "highest"
    assert training_float32("highest") == "ieee"
    assert training_float32(load_config("paper-fast").trainer.matmul_precision) == "tf32"


def test_pytorch_leaves_convolutions_on_tf32_by_default() -> None:
    """Why fp32 must be set explicitly: a fresh process reads cuDNN's convolution mode as tf32."""
    import subprocess
    import sys

    code = "from dsen2cr.precision import float32_mode; print(float32_mode()['cudnn.conv'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "tf32"


def test_the_output_says_what_made_it_and_how_to_show_it(workdir: Path, weights_file: Callable[[str], Path]) -> None:
    """Provenance tags (model, weights file and its SHA-256 computed here with hashlib, version, keep-clear,
    mask) and what viewers need: band names, the reflectance scale 0.0001 and red/green/blue on B4/B3/B2."""
    import hashlib

    from rasterio.enums import ColorInterp

    from dsen2cr import __version__
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    weights = weights_file("dsen2cr-small-nosar")
    out = workdir / "o.tif"
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(out), "--no-progress"]
    assert main([*argv, "--keep-clear", "--feather", "3"]) == 0
    with rasterio.open(out) as dataset:
        tags, scales, colours = dataset.tags(), dataset.scales, dataset.colorinterp
        names = [dataset.tags(index)["BAND"] for index in range(1, dataset.count + 1)]
    assert tags["DSEN2CR_WEIGHTS_SHA256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert tags["DSEN2CR_WEIGHTS"] == weights.name and tags["DSEN2CR_VERSION"] == __version__
    assert tags["DSEN2CR_MODEL"] == "dsen2cr B=4, F=32 without SAR"
    assert (tags["DSEN2CR_KEEP_CLEAR"], tags["DSEN2CR_MASK"]) == ("yes, feather 3 px", "paper")
    assert names[:4] == ["B1", "B2", "B3", "B4"] and scales == (1e-4,) * 13
    assert (colours[3], colours[2], colours[1]) == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


def test_the_output_records_its_inputs_mask_threshold_tiling_and_s1_fill(workdir: Path) -> None:
    """Beyond the model: which scene and S1 (file names, never a machine's folders), the paper mask's cloud
    threshold, the tiling (exact, or an overlap below the exact one: pixels near window edges differ from
    whole-image inference) and the share of valid pixels where S1 had no data and its scene mean filled in;
    the cloud/shadow map records its scene and threshold too."""
    from dsen2cr.cli import main
    from dsen2cr.outputs.geotiff import write_geotiff

    s2, s1 = workdir.scene()
    weights = str(workdir.weights("dsen2cr-small"))
    argv = ["remove-clouds", "--weights", weights, "--s2", str(s2), "--no-progress", "--s1"]
    assert main([*argv, str(s1), "--out", str(workdir / "a.tif"), "--mask-out", str(workdir / "m.tif")]) == 0
    with rasterio.open(workdir / "a.tif") as out, rasterio.open(workdir / "m.tif") as mask:
        tags, mask_tags = out.tags(), mask.tags()
    assert (tags["DSEN2CR_S2"], tags["DSEN2CR_S1"], tags["DSEN2CR_CLOUD_THRESHOLD"]) == ("s2.tif", "s1.tif", "0.2")
    assert tags["DSEN2CR_TILING"] == "windows of at most 320 px, overlap 20 px (exact: whole-image inference)"
    assert tags["DSEN2CR_S1_FILLED"] == "none"
    assert (mask_tags["DSEN2CR_S2"], mask_tags["DSEN2CR_CLOUD_THRESHOLD"]) == ("s2.tif", "0.2")
    assert tags["DSEN2CR_S1_UNITS"] == mask_tags["DSEN2CR_S1_UNITS"] == "dB"
    assert "DSEN2CR_RESAMPLING" not in tags  # a 13-band GeoTIFF at 10 m: nothing resampled
    with rasterio.open(s1) as source:
        holes = source.read()
        holes[:, :, :25] = np.nan
        write_geotiff(workdir / "holes.tif", holes, crs=source.crs, transform=source.transform)
    extra = ["--overlap", "4", "--cloud-threshold", "0.35", "--out", str(workdir / "b.tif")]
    assert main([*argv, str(workdir / "holes.tif"), *extra]) == 0
    with rasterio.open(workdir / "b.tif") as out:
        tags = out.tags()
    assert tags["DSEN2CR_TILING"] == (
        "windows of at most 320 px, overlap 4 px (below the exact 20 px: pixels near window edges differ from "
        "whole-image inference)"
    )
    assert tags["DSEN2CR_CLOUD_THRESHOLD"] == "0.35"
    assert tags["DSEN2CR_S1_FILLED"].startswith("50.0% of the valid pixels, with the scene's mean (VV ")


def test_a_dropped_tf32_candidate_falls_back_to_ieee_fp32_for_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the TF32 check fails under --precision auto, the run continues with the reference: it must then
    compute in IEEE fp32 although the predictor's calls set TF32, as its precision says."""
    import dsen2cr.backends
    from dsen2cr.backends import CheckedBackend
    from dsen2cr.predictor import Predictor

    model = create_model("dsen2cr-small-nosar").eval()
    seen: list[str] = []
    forward = model.forward

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(float32_mode()["cudnn.conv"])
        return forward(*args, **kwargs)

    model.forward = recording  # type: ignore[method-assign]
    monkeypatch.setattr(dsen2cr.backends, "TF32_TOLERANCE_DN", -1.0)  # the TF32 check fails (on a CPU,
    monkeypatch.setitem(dsen2cr.backends.TOLERANCE_DN, "eager", -1.0)  # where TF32 differs by nothing)
    checked = CheckedBackend(model, torch.device("cpu"), ["eager"], strict=False, float32="tf32")
    predictor = Predictor(checked, model.config, torch.device("cpu"), "tf32")
    predictor(*_inputs())
    seen.clear()
    predictor(*_inputs())
    assert predictor.precision == "fp32" and seen == ["ieee"]


def test_a_callers_autocast_does_not_reach_a_float32_predictor() -> None:
    """A caller's own ``torch.autocast`` (a notebook, a Lightning module under bf16-mixed calling the Python API)
    ran the fp32 network in bf16 while its outputs said fp32 (30 DN off on the bundled scene). Inside the
    predictor's call float32 means float32: the prediction and the variance equal those made outside it."""
    from dsen2cr.models.dsen2cr import DSen2CR

    torch.manual_seed(0)
    model = DSen2CR(num_blocks=2, num_features=16, include_sar=False, uncertainty="diag").eval()
    predictor = predictor_from_model(model, backend="eager", device="cpu", precision="fp32")
    s2, s1 = _inputs()
    plain, (plain_mean, plain_variance) = predictor(s2, s1), predictor.predict_with_variance(s2, s1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = predictor(s2, s1)
        mean, variance = predictor.predict_with_variance(s2, s1)
        assert torch.is_autocast_enabled("cpu")  # the caller's context is theirs again after the call
    assert np.array_equal(inside, plain) and inside.dtype == np.float32
    assert np.array_equal(mean, plain_mean) and np.array_equal(variance, plain_variance)


def test_a_training_run_sets_its_arithmetic_for_the_run_and_restores_the_callers(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_training trains in its config's float32 arithmetic (the paper's: IEEE convolutions and matmuls), and a
    Python caller gets its own back: a notebook that trained the paper-fast config went on in TF32 (or after the
    paper config in IEEE) for the rest of the process."""
    from dsen2cr.config import load_config
    from dsen2cr.training.module import DSen2CRTask
    from dsen2cr.training.train import run_training

    seen: list[tuple[dict[str, str], str]] = []
    step = DSen2CRTask.training_step

    def recording(self: DSen2CRTask, *args: object) -> torch.Tensor:
        seen.append((float32_mode(), _matmul_setting()))
        return step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(DSen2CRTask, "training_step", recording)
    before_matmul = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with float32_arithmetic("tf32"):  # the caller's
            run_training(load_config(workdir.config(), ["trainer.matmul_precision=highest"]), progress=False)
            assert float32_mode() == {"cudnn.conv": "tf32", "cuda.matmul": "tf32"}
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before_matmul)
    highest = "ieee" if hasattr(torch.backends.mkldnn, "matmul") else "highest"
    assert seen and all(s == ({"cudnn.conv": "ieee", "cuda.matmul": "ieee"}, highest) for s in seen), seen


def _matmul_setting() -> str:
    """The CPU's float32 matmul setting: oneDNN's flag (PyTorch 2.9 on, which training sets, never the older API's
    level: its getter reports the level last set, not what computes), else the older API's level."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return matmul.fp32_precision if matmul is not None else torch.get_float32_matmul_precision()
