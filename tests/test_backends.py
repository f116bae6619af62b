"""Every inference backend agrees with eager fp32 (accuracy only; speed is in benchmarks/)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dsen2cr import DSen2CR
from dsen2cr.backends import _eager, build_backend, relative_error, select_backend
from dsen2cr.errors import DSen2CRError


@pytest.fixture(scope="module")
def tiny() -> DSen2CR:
    torch.manual_seed(0)
    return DSen2CR(num_blocks=2, num_features=16).eval()


def _inputs(batch: int = 2, h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (
        rng.uniform(0, 5, (batch, 13, h, w)).astype(np.float32),
        rng.uniform(0, 2, (batch, 2, h, w)).astype(np.float32),
    )


def _reference(model: DSen2CR, s2: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """The model evaluated in float64 (on a copy)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(s2).double(), torch.from_numpy(s1).double()).numpy()


@pytest.mark.parametrize(
    ("backend", "tolerance"),
    [("eager", 1e-5), pytest.param("compiled", 1e-3, marks=pytest.mark.slow), ("fp16", 1e-2), ("bf16", 5e-2)],
)
def test_backend_agrees_with_fp32(tiny: DSen2CR, backend: str, tolerance: float) -> None:
    s2, s1 = _inputs()
    expected = _reference(tiny, s2, s1)
    predictor = build_backend(tiny, backend)
    error = relative_error(predictor(s2, s1), expected)
    print(f"{backend}: relative error {error:.2e}")
    assert error < tolerance


def test_auto_falls_back_to_eager_when_compiling_fails(
    tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    predictor = select_backend(tiny.float(), ("compiled", "eager"))
    s2, s1 = _inputs(1, 32, 32)
    np.testing.assert_array_equal(predictor(s2, s1), build_backend(tiny, "eager")(s2, s1))
    assert "backend compiled unavailable" in caplog.text
    assert predictor.backend == "eager"


def test_probe_reference_is_the_centre_of_the_whole_output(tiny: DSen2CR) -> None:
    """The backend check runs eager only on a crop around the batch's centre; that crop's centre equals
    the centre of eager on the whole batch (the crop reaches the receptive-field radius beyond it)."""
    from dsen2cr.backends import _centre_reference

    s2, s1 = _inputs(1, 150, 130)
    eager = build_backend(tiny, "eager")
    centre, (rows, cols) = _centre_reference(tiny, eager, s2, s1, size=40)
    assert (rows, cols) == (slice(55, 95), slice(45, 85))
    np.testing.assert_allclose(centre, eager(s2, s1)[:, :, rows, cols], rtol=0, atol=1e-6)


def _recording_backend(backends: object, calls: list[tuple[str, tuple[int, ...]]], *, wrong: bool) -> object:
    """A build_backend whose candidate is eager (one centre pixel off when ``wrong``) and logs each call."""

    def build(model: DSen2CR, name: str, device: object = "cpu") -> object:
        eager = _eager(model, torch.device("cpu"))

        def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
            calls.append((name, s2.shape))
            out = eager(s2, s1)
            if wrong:
                out[:, :, out.shape[2] // 2, out.shape[3] // 2] += 1.0
            return out

        return predict

    return build


def test_the_check_is_the_first_batch_itself(tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate that agrees is run once per batch, the first included: no extra forward pass on a probe;
    eager runs once, on a crop of the first batch only."""
    import dsen2cr.backends as backends

    calls: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(backends, "build_backend", _recording_backend(backends, calls, wrong=False))
    eager_shapes: list[tuple[int, ...]] = []

    def counting_eager(model: DSen2CR, device: torch.device) -> object:
        predict = _eager(model, device)
        return lambda s2, s1: eager_shapes.append(s2.shape) or predict(s2, s1)

    monkeypatch.setattr(backends, "_eager", counting_eager)
    predictor = select_backend(tiny, ("compiled", "eager"))
    s2, s1 = _inputs(2, 200, 180)
    expected = _eager(tiny, torch.device("cpu"))(s2, s1)
    for _ in range(3):
        np.testing.assert_allclose(predictor(s2, s1), expected, rtol=0, atol=1e-6)
    assert predictor.backend == "compiled"
    assert calls == [("compiled", (2, 13, 200, 180))] * 3
    radius = tiny.config.receptive_radius
    assert eager_shapes == [(2, 13, 32 + 2 * radius, 32 + 2 * radius)]  # the check's crop, once


def test_auto_drops_a_backend_that_disagrees_in_the_centre(
    tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dsen2cr.backends as backends

    calls: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(backends, "build_backend", _recording_backend(backends, calls, wrong=True))
    predictor = select_backend(tiny, ("compiled", "eager"))
    s2, s1 = _inputs(1, 200, 180)
    got = predictor(s2, s1)
    assert "backend compiled (fp32) disagrees with IEEE fp32 eager on the first batch" in caplog.text
    assert predictor.backend == "eager"
    np.testing.assert_array_equal(got, _eager(tiny, torch.device("cpu"))(s2, s1))  # the batch is redone
    predictor(s2, s1)
    assert len(calls) == 1  # the dropped candidate is not run again


def test_a_named_backend_that_disagrees_stops_the_run(tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsen2cr.backends as backends

    monkeypatch.setattr(backends, "build_backend", _recording_backend(backends, [], wrong=True))
    predictor = select_backend(tiny, ("compiled",), strict=True)
    s2, s1 = _inputs(1, 120, 100)
    with pytest.raises(
        DSen2CRError,
        match=r"backend compiled \(fp32\) disagrees with IEEE fp32 eager on the first batch: p99 .* DN, max 2000\.0 DN",
    ):
        predictor(s2, s1)


@pytest.mark.parametrize(("dtype", "low", "high"), [(torch.bfloat16, 1e-4, 5e-2), (torch.float16, 1e-5, 5e-3)])
def test_fused_half_network_computes_the_model(tiny: DSen2CR, dtype: torch.dtype, low: float, high: float) -> None:
    """The fused 16-bit form (the CUDA fp16 and bf16 backends; convolution then ReLU off CUDA) folds the
    residual scale into the second convolution and adds in place: its output matches the model in float64 to
    the type's precision (fp16 keeps 3 more bits than bf16), and the model it was made from is unchanged."""
    from dsen2cr.models.dsen2cr import FusedHalf

    before = {name: value.clone() for name, value in tiny.state_dict().items()}
    s2, s1 = _inputs(2, 40, 36)
    with torch.inference_mode():
        got = FusedHalf(tiny, dtype=dtype)(torch.from_numpy(s2), torch.from_numpy(s1)).numpy()
    assert got.dtype == np.float32
    error = relative_error(got, _reference(tiny, s2, s1))
    assert low < error < high, error  # 16-bit, not fp32
    for name, value in tiny.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_a_named_backend_that_cannot_build_is_a_one_line_error_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    weights_file: Callable[[str], Path],
) -> None:
    """``--backend compiled`` where compiling fails is the environment, not a bug: one line naming the backend
    and the failure, exit 2, nothing written."""
    from rasterio.transform import from_origin

    from dsen2cr.cli import main
    from dsen2cr.outputs.geotiff import write_geotiff

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler")

    s2 = np.random.default_rng(0).integers(1, 5000, (13, 48, 64)).astype(np.uint16)
    write_geotiff(tmp_path / "s2.tif", s2, crs="EPSG:32632", transform=from_origin(500000, 5000000, 10, 10))
    weights = weights_file("dsen2cr-small-nosar")
    monkeypatch.setattr(torch, "compile", broken)
    args = ["remove-clouds", "--weights", str(weights), "--s2", str(tmp_path / "s2.tif"), "--out"]
    code = main([*args, str(tmp_path / "out.tif"), "--backend", "compiled", "--device", "cpu", "--no-progress"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1] == (
        "dsen2cr remove-clouds: error: backend compiled: cannot be built or run here (RuntimeError: no C++ "
        "compiler); use --backend eager or auto"
    )
    assert not (tmp_path / "out.tif").exists()


def test_fp32_paths_and_fp16_bring_the_fused_form_closer_to_float64() -> None:
    """#27 item 3: keeping the residual stream fp32 (each block's convolutions read a 16-bit copy), and the head
    and tail in fp32, leaves only the blocks' convolutions' own rounding, not one rounding of the whole stream
    per block; fp16 rounds to 11 significant bits where bf16 keeps 8. On a 12-block model, against float64:
    each step lands closer, and none is fp32."""
    from dsen2cr.models.dsen2cr import FusedHalf

    torch.manual_seed(3)
    deep = DSen2CR(num_blocks=12, num_features=32, include_sar=True).eval()
    s2, s1 = _inputs(1, 48, 48)
    reference = _reference(deep, s2, s1)
    with torch.inference_mode():
        inputs = (torch.from_numpy(s2), torch.from_numpy(s1))
        forms = [FusedHalf(deep, dtype=d, fp32_paths=p) for d in (torch.bfloat16, torch.float16) for p in (False, True)]
        bf16, bf16_paths, fp16, fp16_paths = (np.abs(form(*inputs).numpy() - reference).mean() for form in forms)
    assert 1e-7 < fp16_paths < 0.8 * fp16 < 0.8 * 0.3 * bf16, (fp16_paths, fp16, bf16)
    assert fp16_paths < 0.3 * bf16_paths < 0.3 * 0.8 * bf16, (fp16_paths, bf16_paths, bf16)


def test_fused_half_takes_only_16_bit_floats(tiny: DSen2CR) -> None:
    from dsen2cr.models.dsen2cr import FusedHalf

    with pytest.raises(ValueError, match=r"dtype must be torch\.float16 or torch\.bfloat16, got torch\.float32"):
        FusedHalf(tiny, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_off_cuda_computes_the_tensor_cores_arithmetic(dtype: torch.dtype) -> None:
    """Off CUDA each convolution of the fused form is what a tensor core computes: the 16-bit values multiplied
    exactly, summed at high precision, the result rounded once to 16 bits. Against the same convolution in
    float64 rounded to 16 bits: equal but for sums within fp32's rounding of a 16-bit tie (one unit in the last
    place, rarely)."""
    from dsen2cr.models.dsen2cr import FusedHalf

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 32, 24, 24, generator=generator).to(dtype)
    weight = (torch.randn(16, 32, 3, 3, generator=generator) * 0.06).to(dtype)
    bias = (torch.randn(16, generator=generator) * 0.1).to(dtype)
    got = FusedHalf._conv(x, weight, bias)
    exact = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1).to(dtype)
    assert got.dtype == dtype
    differ = got != exact
    assert differ.float().mean() < 0.01  # about 0.1 %: fp32 sums of 288 products, near a 16-bit tie
    spacing = torch.finfo(dtype).eps * exact.double().abs().clamp(min=torch.finfo(dtype).tiny)
    assert ((got.double() - exact.double()).abs()[differ] <= spacing[differ]).all()
