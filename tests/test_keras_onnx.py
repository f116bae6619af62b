"""Published-checkpoint import (Keras HDF5, checked against Keras's own outputs) and ONNX export."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dsen2cr import create_model
from dsen2cr.errors import DSen2CRError
from dsen2cr.keras import load_keras_weights
from dsen2cr.models import VARIANTS
from dsen2cr.weights import load_model, save_weights

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
KERAS_FILES = {
    "keras224_full_sar": True,  # full model, Keras 2.2.4 names conv2d_1 ... conv2d_12
    "keras_weights_nosar": False,  # weights only, later names conv2d, conv2d_1, ...
    "keras224_multigpu_sar": True,  # the model nested as one layer (multi_gpu_model)
    "keras_weights_multigpu_nosar": False,
}


def _outputs() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "keras_outputs.npz"))


@pytest.mark.parametrize(("name", "include_sar"), KERAS_FILES.items())
def test_converted_model_reproduces_keras(name: str, include_sar: bool) -> None:
    reference = _outputs()
    model = load_model(FIXTURES / f"{name}.h5")
    assert (model.config.num_blocks, model.config.num_features, model.include_sar) == (5, 8, include_sar)
    with torch.no_grad():
        s1 = torch.from_numpy(reference["s1"]) if include_sar else None
        out = model(torch.from_numpy(reference["s2"]), s1).numpy()
    assert np.abs(out - reference["s2"]).mean() > 0.5  # a real correction, not the long skip alone
    np.testing.assert_allclose(out, reference[name], atol=1e-5, rtol=0)


def test_layer_order_comes_from_the_file_not_from_sorted_names() -> None:
    _, state = load_keras_weights(FIXTURES / "keras224_full_sar.h5")
    with h5py.File(FIXTURES / "keras224_full_sar.h5") as f:
        # the 10th conv is block 4's first; sorting names would put conv2d_10 third (after conv2d_1)
        tenth = np.asarray(f["model_weights/conv2d_10/conv2d_10/kernel:0"])
    np.testing.assert_array_equal(state["blocks.4.conv1.weight"].numpy(), tenth.transpose(3, 2, 0, 1))


def test_convert_keras_command(tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out = tmp_path / "paper.safetensors"
    result = run_cli("convert-keras", str(FIXTURES / "keras224_multigpu_sar.h5"), str(out))
    assert result.returncode == 0, result.stderr
    assert "dsen2cr B=5, F=8 with SAR" in result.stdout
    assert load_model(out).config == load_model(FIXTURES / "keras224_multigpu_sar.h5").config


def _write_keras_like(path: Path, kernels: list[tuple[int, int, int, int]]) -> None:
    """A weights-only Keras-layout file with the given conv kernel shapes."""
    with h5py.File(path, "w") as f:
        names = [f"conv2d_{i + 1}" for i in range(len(kernels))]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name, shape in zip(names, kernels, strict=True):
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
            group.create_dataset(f"{name}/kernel:0", data=np.zeros(shape, np.float32))
            group.create_dataset(f"{name}/bias:0", data=np.zeros(shape[-1], np.float32))


def test_bad_keras_files(tmp_path: Path) -> None:
    not_hdf5 = tmp_path / "model.h5"
    not_hdf5.write_bytes(b"this is not HDF5")
    with pytest.raises(DSen2CRError, match=r"model.h5: not an HDF5 file"):
        load_model(not_hdf5)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DSen2CRError, match=r"plain.h5: HDF5 file is not a Keras model or weights file"):
        load_model(plain)
    truncated = tmp_path / "truncated.h5"
    data = (FIXTURES / "keras224_full_sar.h5").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DSen2CRError, match=r"truncated.h5: (truncated or damaged HDF5 file|damaged Keras file)"):
        load_model(truncated)
    odd = tmp_path / "odd.h5"
    _write_keras_like(odd, [(3, 3, 15, 8), (3, 3, 8, 8), (3, 3, 8, 13)])
    with pytest.raises(DSen2CRError, match=r"odd.h5: 3 convolution layers; DSen2-CR has 2 x blocks \+ 2"):
        load_model(odd)
    wrong_in = tmp_path / "wrong_in.h5"
    _write_keras_like(wrong_in, [(3, 3, 14, 8), (3, 3, 8, 13)])
    with pytest.raises(DSen2CRError, match=r"layer conv2d_1: 14 input channels; expected 13 \(S2\) or 15"):
        load_model(wrong_in)
    wrong_block = tmp_path / "wrong_block.h5"
    _write_keras_like(wrong_block, [(3, 3, 15, 8), (3, 3, 8, 8), (3, 3, 8, 16), (3, 3, 8, 13)])
    with pytest.raises(
        DSen2CRError, match=r"layer conv2d_3 \(blocks.0.conv2\): kernel \(3, 3, 8, 16\) .* expected \(3, 3, 8, 8\)"
    ):
        load_model(wrong_block)


def test_onnx_export_matches_pytorch_on_any_size(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from dsen2cr.cli import main

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    weights = save_weights(model, tmp_path / "small.safetensors")
    out = tmp_path / "small.onnx"
    assert main(["export-onnx", "--weights", str(weights), str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, h, w in ((1, 37, 29), (3, 64, 80)):
        s2, s1 = torch.rand(batch, 13, h, w) * 5, torch.rand(batch, 2, h, w) * 2
        got = session.run(None, {"s2_cloudy": s2.numpy(), "s1": s1.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(s2, s1).numpy(), atol=1e-4, rtol=0)


def test_onnx_files_record_what_made_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An ONNX file recorded the model's shape and its precision, not the weights it was exported from, the
    version, nor for int8 the calibration that set its ranges (on which its accuracy depends). Now both kinds
    record the source's name and SHA-256 and the version, the source's training record, and an int8 file its
    calibration (read back here with onnx alone)."""
    pytest.importorskip("onnxruntime")
    import hashlib
    import json

    import onnx

    from dsen2cr import __version__
    from dsen2cr.cli import main

    record = {"dsen2cr_training": json.dumps({"epoch": 3, "global_step": 40, "loss": {"name": "carl"}})}
    weights = save_weights(create_model("dsen2cr-small"), tmp_path / "small.safetensors", provenance=record)
    files = {}
    for extra, name in (((), "fp32.onnx"), (("--int8", "--calibration-patches", "2"), "int8.onnx")):
        assert main(["export-onnx", "--weights", str(weights), *extra, str(tmp_path / name)]) == 0
        props = {entry.key: entry.value for entry in onnx.load(str(tmp_path / name)).metadata_props}
        assert props["dsen2cr_source"] == "small.safetensors", props
        assert props["dsen2cr_source_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert props["dsen2cr_version"] == __version__
        assert props["dsen2cr_training"] == record["dsen2cr_training"]
        files[name] = props
    assert "dsen2cr_int8_calibration" not in files["fp32.onnx"]
    calibration = json.loads(files["int8.onnx"]["dsen2cr_int8_calibration"])
    assert calibration == {"method": "minmax", "crops": 2, "patches": 4, "file_list": "the bundled sample, train"}


def test_onnx_file_with_other_inputs_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from dsen2cr.onnx_runtime import OnnxPredictor

    class Other(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = tmp_path / "other.onnx"
    torch.onnx.export(Other(), (torch.rand(1, 3, 8, 8),), str(path), input_names=["image"], dynamo=True)
    with pytest.raises(DSen2CRError, match=r"other.onnx: ONNX inputs \['image'\]; expected s2_cloudy"):
        OnnxPredictor(path)


def test_int8_export_quantises_every_convolution_per_channel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """export-onnx --int8: int8 weights whose per-channel scales are max|w|/127 (recomputed here from the
    PyTorch weights), output near fp32 but not equal to it, and evaluate runs on the int8 file."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from dsen2cr.cli import main
    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.evaluate import evaluate
    from dsen2cr.onnx_runtime import OnnxPredictor
    from dsen2cr.predictor import load_predictor

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    weights = save_weights(model, tmp_path / "small.safetensors")
    out = tmp_path / "small-int8.onnx"
    assert main(["export-onnx", "--weights", str(weights), "--int8", "--calibration-patches", "4", str(out)]) == 0
    assert "int8, minmax calibration on 4 crops" in capsys.readouterr().out

    graph = onnx.load(str(out)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    int8_kernels = {name: array for name, array in tensors.items() if array.dtype == np.int8 and array.ndim == 4}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 10 and len(int8_kernels) == 8  # all but the first (model.head) and the last, fp32
    for kept in (model.head, model.tail):
        weight = kept.weight.detach().numpy()
        assert [n for n, a in tensors.items() if a.dtype == np.float32 and np.array_equal(a, weight)], kept
    float_kernels = [c.weight.detach().numpy().astype(np.float64) for c in convs]
    # onnxruntime's pre-processing folds the residual scaling (x 0.1) into the second conv of each block, and
    # each output channel c of that conv is multiplied by a gain g_c that a Mul by 1 / g_c undoes (the test of
    # equalisation checks g); here the int8 kernel is compared with 0.1 * g_c * w_c
    gains = [1 / t.reshape(-1).astype(np.float64) for n, t in tensors.items() if n.endswith("_channel_gain")]
    assert len(gains) == len(model.blocks)
    float_kernels += [
        0.1 * b.conv2.weight.detach().numpy().astype(np.float64) * g[:, None, None, None]
        for b, g in zip(model.blocks, gains, strict=True)
    ]
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in int8_kernels:
            quantised, scale = int8_kernels[node.input[0]], tensors[node.input[1]].astype(np.float64)
            matches = [w for w in float_kernels if w.shape == quantised.shape]
            expected_scale = [np.abs(w).reshape(len(w), -1).max(axis=1) / 127 for w in matches]
            index = int(np.argmin([np.abs(s - scale).max() for s in expected_scale]))
            np.testing.assert_allclose(scale, expected_scale[index], rtol=1e-6)
            error = np.abs(quantised * scale[:, None, None, None] - matches[index]).max(axis=(1, 2, 3))
            assert (error <= scale / 2 * 1.0001).all()

    triplets = resolve_split(DataSection(), "val") + resolve_split(DataSection(), "test")
    int8 = OnnxPredictor(out)
    assert int8.precision == "int8" and int8.config == model.config
    s2 = np.random.default_rng(1).uniform(0, 1.5, (2, 13, 48, 40)).astype(np.float32)
    s1 = np.random.default_rng(2).uniform(0, 1.5, (2, 2, 48, 40)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(s2), torch.from_numpy(s1)).numpy()
    error = np.abs(int8(s2, s1) - reference).max() / np.abs(reference).max()
    assert 0 < error < 0.05, error
    fp32_summary = evaluate(model, triplets, tmp_path / "fp32", write_images=False)
    int8_summary = evaluate(load_predictor(out), triplets, tmp_path / "int8", write_images=False)
    fp32_mae, int8_mae = (s["model"]["mae"]["mean"] for s in (fp32_summary, int8_summary))
    assert abs(int8_mae - fp32_mae) < 0.05 * fp32_mae, (fp32_mae, int8_mae)
    made = json.loads((tmp_path / "int8" / "summary.json").read_text())["provenance"]
    assert made["DSEN2CR_ARITHMETIC"] == "int8 convolutions by onnxruntime (static quantisation)"


def test_int8_calibration_method_sets_the_activation_ranges(tmp_path: Path) -> None:
    """min/max calibration gives the first quantised activation (the first block's copy of the head's ReLU
    output) the scale max(x)/255 of the calibration data (recomputed here with PyTorch); percentile
    calibration clips the tail, so its scale is smaller; the per-layer report names the quantised
    activations in graph order with finite SQNR."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.onnx_export import activation_errors, calibration_batches, export_onnx, quantize_onnx

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    triplets = resolve_split(DataSection(), "train")
    batches = list(calibration_batches(triplets, 4))
    with torch.no_grad():  # ReLU: the range is [0, max], zero point 0
        data_max = max(
            float(torch.relu(model.head(torch.cat([torch.from_numpy(a) for a in b], 1))).max()) for b in batches
        )

    def input_scale(method: str) -> float:
        out = quantize_onnx(fp32, tmp_path / f"{method}.onnx", iter(batches), method=method)
        graph = onnx.load(str(out)).graph
        tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        (copy,) = [n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] == "relu"]
        (node,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == copy]
        return float(tensors[node.input[1]])

    assert input_scale("minmax") == pytest.approx(data_max / 255, rel=1e-6)
    assert 0.3 * data_max / 255 < input_scale("percentile") < data_max / 255
    errors = activation_errors(fp32, tmp_path / "percentile.onnx", batches[:1])
    assert len(errors) == 12  # per block: the first convolution's input copy, its ReLU, the second's output
    assert all(np.isfinite(v) and v > 10 for v in errors.values()), errors
    with pytest.raises(DSen2CRError, match="calibration method"):
        quantize_onnx(fp32, tmp_path / "x.onnx", iter(batches), method="kl")


def test_int8_keeps_the_residual_paths_fp32(tmp_path: Path) -> None:
    """The residual sums and the input added back at the end are never rounded to int8 (no quantiser reads an
    Add's output or a graph input; each convolution reads its own quantised copy); the last convolution stays
    fp32. Against PyTorch fp32 on the sample's held-out patches, the int8 output's mean error is under half that
    of onnxruntime's default quantisation of the same export with the same calibration."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.onnx_export import _feeds_reader, calibration_batches, export_onnx, quantize_onnx
    from dsen2cr.onnx_runtime import OnnxPredictor

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    batches = list(calibration_batches(resolve_split(DataSection(), "train"), 4))
    ours = quantize_onnx(fp32, tmp_path / "int8.onnx", iter(batches))
    graph = onnx.load(str(ours)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    quantised = [node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"]
    assert quantised and not [name for name in quantised if producers.get(name, "input") in ("Add", "input")]
    # nor a tensor that a sum also reads: the first block adds the head's ReLU output, fp32, to its branch
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    shared = [name for name, ops in readers.items() if {"Conv", "Add"} <= ops]
    assert not [name for name in shared if producers.get(name) == "DequantizeLinear"], shared
    # the first convolution (reads the input bands, S2 and S1 at their own scales) and the last stay fp32
    kernels = {t.name: t.data_type for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    dequantised = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert [node.input[1] in kernels and kernels[node.input[1]] == onnx.TensorProto.FLOAT for node in convs] == [
        True,
        *[False] * (len(convs) - 2),
        True,
    ], [(node.name, dequantised.get(node.input[1])) for node in convs]

    default = tmp_path / "default.onnx"
    reader = _feeds_reader(OnnxPredictor(fp32).feeds(*batch) for batch in batches)
    quantize_static(
        str(fp32),
        str(default),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    held = list(calibration_batches(resolve_split(DataSection(), "val") + resolve_split(DataSection(), "test"), 2))
    s2, s1 = np.concatenate([b[0] for b in held]), np.concatenate([b[1] for b in held])
    with torch.no_grad():
        reference = model(torch.from_numpy(s2), torch.from_numpy(s1)).numpy().astype(np.float64)
    ours_error = np.abs(OnnxPredictor(ours)(s2, s1) - reference).mean()
    default_error = np.abs(OnnxPredictor(default)(s2, s1) - reference).mean()
    assert 0 < ours_error < 0.5 * default_error, (ours_error, default_error)


def test_int8_equalises_the_channels_of_each_residual_branch(tmp_path: Path) -> None:
    """The convolution whose output is added to the residual stream has its output channels scaled to one
    range before quantisation (then scaled back, fp32, before the sum): channel c's gain is max_k a_k / (2 a_c)
    within [1, 16], a_c = max |branch output| of channel c over the calibration crops, recomputed here with
    PyTorch hooks."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.onnx_export import calibration_batches, export_onnx, quantize_onnx

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    batches = list(calibration_batches(resolve_split(DataSection(), "train"), 4))
    peaks: dict[int, torch.Tensor] = {}

    def record(index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
            peak = (output.double() * model.blocks[index].res_scale).abs().amax(dim=(0, 2, 3))
            peaks[index] = torch.maximum(peaks[index], peak) if index in peaks else peak

        return hook

    handles = [block.conv2.register_forward_hook(record(i)) for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        for s2, s1 in batches:
            model(torch.from_numpy(s2), torch.from_numpy(s1))
    for handle in handles:
        handle.remove()

    out = quantize_onnx(export_onnx(model, tmp_path / "fp32.onnx"), tmp_path / "int8.onnx", batches)
    graph = onnx.load(str(out)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    unscale = [
        tensors[name].reshape(-1).astype(np.float64)
        for node in graph.node
        if node.op_type == "Mul"
        for name in node.input
        if name in tensors and tensors[name].size > 1
    ]
    assert len(unscale) == len(model.blocks)
    for index, factors in enumerate(unscale):
        peak = peaks[index].numpy()
        expected = np.clip(peak.max() / (2 * peak), 1, 16)
        assert (expected > 1).sum() >= len(expected) // 4, expected  # the test checks gains, not only ones
        np.testing.assert_allclose(1 / factors, expected, rtol=1e-4)


def test_histogram_calibration_that_cannot_fit_is_refused_before_any_work(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """percentile/entropy calibration holds every activation of every crop: ~1.2 GiB per 128x128 crop of the
    paper's model ((4 x 16 + 6) maps x 256 features x 128^2 px x 4 bytes), so 4096 crops (4480 GiB) are refused
    with a one-line reason and nothing is written; min/max runs in bounded memory."""
    pytest.importorskip("onnxruntime")
    from dsen2cr.onnx_export import calibration_bytes_per_crop

    assert calibration_bytes_per_crop(VARIANTS["dsen2cr"].config) == 70 * 256 * 128 * 128 * 4
    weights = save_weights(create_model("dsen2cr"), tmp_path / "paper.safetensors")
    out = tmp_path / "paper-int8.onnx"
    args = ["export-onnx", "--weights", str(weights), "--int8", "--calibration-patches", "4096", str(out)]
    result = run_cli(*args, "--calibration-method", "percentile")
    assert result.returncode == 2, result.stderr
    assert "--calibration-method percentile: onnxruntime keeps every activation" in result.stderr
    assert "4480.0 GiB for 4096 crops" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["paper.safetensors"]
