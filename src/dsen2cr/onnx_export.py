"""ONNX export (dynamic batch, height and width) and static int8 quantisation, for users who deploy without
PyTorch or want the int8 speed-up. The model configuration (and, for int8 files, the precision) rides in the
ONNX metadata; ``dsen2cr.onnx_runtime.OnnxPredictor`` runs the files."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsen2cr.data.dataset import calibration_batches
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.models import CloudRemovalNetwork, ModelSpec, family_of
from dsen2cr.onnx_runtime import OUTPUT, PRECISION_KEY, S1_INPUT, S2_INPUT, VARIANCE_OUTPUT, OnnxPredictor
from dsen2cr.outputs.files import atomic_path
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.weights import CONFIG_KEY, FAMILY_KEY


class _WithVariance(torch.nn.Module):
    """A network with a variance output as a module of two outputs (prediction, variance), for export."""

    def __init__(self, model: CloudRemovalNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, s2: torch.Tensor, s1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction and its variance."""
        return self.model.forward_with_variance(s2, s1)


def export_onnx(
    model: CloudRemovalNetwork, out: str | Path, *, opset: int | None = None, provenance: dict[str, str] | None = None
) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width; write it atomically. A model with
    ``uncertainty: diag`` gets a second output, ``variance`` (model units squared). ``provenance``: more
    metadata, what made the file (its source weights, the version)."""
    model = model.cpu().eval()
    uncertain = model.config.uncertainty == "diag"
    size = 32
    s2 = torch.rand(2, NUM_S2_BANDS, size, size + 8)
    batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
    axes = {0: batch, 2: height, 3: width}
    args: tuple[torch.Tensor, ...] = (s2,)
    names = [S2_INPUT]
    shapes: tuple[dict, ...] = (axes,)
    if model.include_sar:
        args += (torch.rand(2, NUM_S1_BANDS, size, size + 8),)
        names.append(S1_INPUT)
        shapes += (axes,)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _WithVariance(model) if uncertain else model,
            args,
            input_names=names,
            output_names=[OUTPUT, VARIANCE_OUTPUT] if uncertain else [OUTPUT],
            dynamic_shapes=shapes,
            dynamo=True,
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # only the legacy exporter (dynamo=False) returns nothing
        raise RuntimeError("torch.onnx.export returned no program")
    return _save_with_metadata(program.model_proto, out, model.config, "fp32", provenance)


def _save_with_metadata(
    proto: Any, out: str | Path, config: ModelSpec, precision: str, provenance: dict[str, str] | None = None
) -> Path:
    """Set the dsen2cr metadata (model configuration, precision, ``provenance``) of an ONNX model and save it
    atomically."""
    import onnx

    ours = {
        **(provenance or {}),
        CONFIG_KEY: json.dumps(config.to_dict()),
        FAMILY_KEY: family_of(config).name,
        PRECISION_KEY: precision,
    }
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key not in ours]
    del proto.metadata_props[:]
    for key, value in [*kept, *ours.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)


Batch = tuple[np.ndarray, np.ndarray | None]
#: How activation ranges are set from the calibration batches: ``minmax`` (the default); ``percentile`` clips
#: the 0.001 % tails of each activation's histogram (ReLU outputs are long-tailed; on the demo models SSIM a
#: little better, SAM better or worse: README); ``entropy`` minimises the KL divergence. onnxruntime keeps
#: every activation of every calibration batch in memory for the last two: about 1 GB per 128x128 crop with
#: the paper's model.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: The metadata key of an int8 file's calibration (JSON: method, crops, patches, file list).
CALIBRATION_KEY = "dsen2cr_int8_calibration"
CALIBRATION_PERCENTILE = 99.999


def quantize_onnx(source: str | Path, out: str | Path, calibration: Iterable[Batch], *, method: str = "minmax") -> Path:
    """Static int8 quantisation of an exported fp32 model (``source``) with onnxruntime; writes ``out``.

    Weights become per-channel int8, activations uint8 with ranges set by ``method`` (``CALIBRATION_METHODS``)
    from the ``calibration`` batches (S2, S1-or-None, in model units) run through the fp32 model; convolutions
    then run on int8 kernels (VNNI on recent x86 CPUs). Three parts stay fp32 (:func:`_keep_fp32_paths`): the
    residual stream, of which each convolution reads its own int8 copy, the first convolution (it reads the
    input bands, S2 and S1 at their own scales) and the last. Each residual branch's output channels are
    brought to one range before their int8 rounding (:func:`_equalise_residual_branches`). ``calibration`` is
    read twice (a one-shot iterator is kept in memory). The accuracy cost depends on the weights and the
    calibration data: measure it with ``dsen2cr evaluate --weights <int8 file>`` and see where it arises with
    :func:`activation_errors` (README, "int8").
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise DSen2CRError(f"calibration method: expected one of {CALIBRATION_METHODS}, got {method!r}")
    calibrate_method = {
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    extra = {"CalibPercentile": CALIBRATION_PERCENTILE} if method == "percentile" else {}
    fp32 = OnnxPredictor(source)
    if fp32.precision != "fp32":
        raise DSen2CRError(f"{source}: already quantised ({fp32.precision}); quantise the fp32 export")

    if iter(calibration) is calibration:  # a one-shot iterator: kept, as it is read twice
        calibration = list(calibration)
    if next(iter(calibration), None) is None:
        raise DSen2CRError("int8 calibration: no calibration batches")

    with tempfile.TemporaryDirectory(prefix="dsen2cr-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(source), str(prepared))
        kept = _keep_fp32_paths(prepared, 2 if fp32.uncertainty == "diag" else 1)
        _equalise_residual_branches(prepared, (fp32.feeds(*batch) for batch in calibration), kept)
        quantize_static(
            str(prepared),
            str(quantized),
            _feeds_reader(fp32.feeds(*batch) for batch in calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTISED_OPS,
            nodes_to_exclude=kept,
            calibrate_method=calibrate_method,
            extra_options=extra,
        )
        import onnx

        return _save_with_metadata(onnx.load(str(quantized)), out, fp32.config, "int8")  # the source's others kept


#: The operators int8 quantisation converts: convolutions (with their ReLU, fused into one int8 kernel). The
#: residual sums (``Add``) stay fp32.
QUANTISED_OPS = ["Conv", "Relu"]


def _keep_fp32_paths(path: Path, tails: int = 1) -> list[str]:
    """Prepare an exported graph (rewritten in place) so that int8 quantisation keeps its residual paths fp32;
    return the names of the convolutions to be left fp32: the first, and the last ``tails`` (the tail, and the
    variance tail of a model with uncertainty).

    onnxruntime quantises a tensor once for all its readers. The residual stream (each block's sum, the head's
    ReLU output that the first sum reads, and the network input, which the final sum adds back) is read by a
    convolution and by a sum: quantised, it would be rounded to the stream's int8 step after every block
    (0.027 model units, 55 DN, for the demo model) and the error would accumulate down the network. Each
    convolution that reads a tensor that another operator (a sum, a concatenation) or the caller also reads
    gets an ``Identity`` copy of it here, and only that copy is quantised (onnxruntime's optimiser removes the
    ``Identity`` when the model is loaded). The first convolution reads the input bands, whose int8 step
    would be that of the brightest band (S1 and S2 share one range); the last one's output is the correction
    added to the input, its int8 step would land on the output as is. Each is a small part of the work (the
    paper's model: 15 and 13 of 256 channels of a block's convolution)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    readers = _reader_ops(graph)
    shared = {tensor.name for tensor in graph.input} | {tensor.name for tensor in graph.output}
    shared |= {name for name, ops in readers.items() if set(ops) - set(QUANTISED_OPS)}
    nodes = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] in shared:
            copy = f"{node.name}_int8_input"
            nodes.append(helper.make_node("Identity", [node.input[0]], [copy], name=f"{node.name}_int8_copy"))
            node.input[0] = copy
        nodes.append(node)
    convolutions = [node.name for node in nodes if node.op_type == "Conv"]
    if not convolutions:
        raise DSen2CRError(f"{path}: no convolution to quantise")
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return list(dict.fromkeys([convolutions[0], *convolutions[-tails:]]))


def _reader_ops(graph: Any) -> dict[str, list[str]]:
    """For each tensor of an ONNX ``graph``, the operator types of the nodes that read it."""
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    return readers


#: Equalisation (:func:`_equalise_residual_branches`): a channel is scaled to the widest channel's range over
#: this factor, so that inputs unlike the calibration crops have room before the int8 range clips them (on the
#: bundled real scene, demo model without SAR, |int8 - fp32| largest 1761 DN with 1, 513 with 2, 498 without
#: equalisation; SSIM on the held-out patches -0.0016 with 1, -0.0024 with 2, -0.0038 without: with SAR).
EQUALISATION_HEADROOM = 2.0
#: ... and no channel's gain exceeds this (a channel all but silent on the calibration crops keeps its range).
EQUALISATION_MAX_GAIN = 16.0


def _equalise_residual_branches(path: Path, feeds: Iterable[dict[str, np.ndarray]], kept: list[str]) -> None:
    """Scale the output channels of each quantised convolution whose output only sums go on to read (a
    residual branch, its 0.1 already folded in) to one range, and scale them back in fp32 before the sum
    (rewrites ``path``).

    onnxruntime rounds a convolution's output to int8 with one step for all its channels, set by the widest;
    a branch's channels differ in range by orders of magnitude, and that rounding is most of the int8 error
    of the output (demo model with SAR: SSIM −0.0047 → −0.0019 when it alone is made 16-bit). Channel c's
    weights and bias are multiplied by g_c = max_k a_k / (``EQUALISATION_HEADROOM`` a_c), at least 1 and at
    most ``EQUALISATION_MAX_GAIN`` (a_c: the largest |output| of channel c over the calibration ``feeds``),
    and a per-channel ``Mul`` by 1 / g_c, fp32 and cheap next to a convolution, restores the branch exactly
    (up to fp32 rounding) before the sum."""
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    readers = _reader_ops(graph)
    branches = [
        node
        for node in graph.node
        if node.op_type == "Conv" and node.name not in kept and set(readers.get(node.output[0], ["-"])) == {"Add"}
    ]
    if not branches:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for node in branches:
        probe.graph.output.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in branches]
    peaks: dict[str, np.ndarray] = {}  # a branch convolution's name: its channels' largest |output|
    for feed in feeds:
        for node, output in zip(branches, session.run(names, feed), strict=True):
            peak = np.abs(output).max(axis=(0, 2, 3)).astype(np.float64)
            peaks[node.name] = np.maximum(peaks[node.name], peak) if node.name in peaks else peak
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name not in peaks:
            continue
        peak = peaks[node.name]
        gain = np.clip(peak.max() / (EQUALISATION_HEADROOM * np.maximum(peak, 1e-30)), 1.0, EQUALISATION_MAX_GAIN)
        for name, shape in zip(node.input[1:3], ((-1, 1, 1, 1), (-1,)), strict=False):
            values = numpy_helper.to_array(initializers[name]).astype(np.float64) * gain.reshape(shape)
            initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
        restore = f"{node.name}_channel_gain"
        graph.initializer.append(numpy_helper.from_array((1 / gain).reshape(1, -1, 1, 1).astype(np.float32), restore))
        summed = node.output[0]
        node.output[0] = f"{summed}_equalised"
        nodes.append(helper.make_node("Mul", [node.output[0], restore], [summed], name=restore))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def activation_errors(fp32_path: str | Path, int8_path: str | Path, batches: list[Batch]) -> dict[str, float]:
    """Signal-to-quantisation-noise ratio (dB, higher is better) of every quantised activation of the int8
    model against the same tensor of the fp32 model, over ``batches``, in graph order (onnxruntime's
    ``qdq_loss_debug``): where the int8 error arises and how it accumulates towards the output."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    feeds = [OnnxPredictor(fp32_path).feeds(*batch) for batch in batches]
    with tempfile.TemporaryDirectory(prefix="dsen2cr-int8-debug-") as tmp:
        activations = []
        for name, path in (("fp32", fp32_path), ("int8", int8_path)):
            augmented = Path(tmp) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations.append(collect_activations(str(augmented), _feeds_reader(feeds)))
    matching = create_activation_matching(activations[1], activations[0])
    int8_graph = onnx.load(str(int8_path)).graph
    for node in int8_graph.node:  # a convolution's int8 copy of a residual tensor: compared with that tensor
        if node.op_type == "Identity" and node.output[0] in matching and "float" not in matching[node.output[0]]:
            matching[node.output[0]]["float"] = activations[0][node.input[0]]
        if node.op_type == "Mul" and node.name.endswith("_channel_gain"):  # an equalised branch, restored
            matching.pop(node.input[0], None)  # scaled per channel: not comparable with fp32
            restored = activations[1][node.output[0]]
            matching[node.output[0]] = {
                "pre_qdq": restored,
                "post_qdq": restored,
                "float": activations[0][node.output[0]],
            }
    errors = compute_activation_error({name: match for name, match in matching.items() if "float" in match})
    order = [output for node in int8_graph.node for output in node.output]
    ranked = sorted((n for n in errors if n in order and "xmodel_err" in errors[n]), key=order.index)
    return {name: float(errors[name]["xmodel_err"]) for name in ranked}


def _feeds_reader(feeds: Iterable[dict[str, np.ndarray]]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` that gives ``feeds`` (session inputs) once each, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.remaining, None)

    return Reader()


def calibration_bytes_per_crop(config: ModelSpec, crop_size: int = 128) -> int:
    """Memory that percentile or entropy calibration holds per calibration crop (onnxruntime keeps every
    activation of every crop): about 4 feature maps per residual block and 6 more, float32 (measured with the
    paper's model: 983 MiB per 120x120 crop, 70 maps): two maps per convolution (one per pixel of receptive
    radius) and two more, of the widest feature map."""
    return (2 * config.receptive_radius + 2) * config.hidden_channels * crop_size**2 * 4


def export_onnx_int8(
    model: CloudRemovalNetwork,
    out: str | Path,
    calibration: list[Triplet],
    patches: int = 16,
    *,
    method: str = "minmax",
    provenance: dict[str, str] | None = None,
    data: str = "given patches",
) -> Path:
    """Export ``model`` to ONNX and quantise it to int8 (:func:`quantize_onnx` with ``method``), calibrated on
    ``patches`` crops of the ``calibration`` triplets; the fp32 export lives in a temporary folder that is
    always removed. The file records ``provenance`` and its calibration (:data:`CALIBRATION_KEY`: the method,
    the crops, the patches and ``data``, what they are). Refuses, before any work, a histogram calibration
    whose activations would not fit in the available memory."""
    if method != "minmax":
        import psutil

        need = patches * calibration_bytes_per_crop(model.config)
        available = psutil.virtual_memory().available
        if need > available:
            raise DSen2CRError(
                f"--calibration-method {method}: onnxruntime keeps every activation of every calibration crop in "
                f"memory, about {need / 2**30:.1f} GiB for {patches} crops of this model, more than the "
                f"{available / 2**30:.1f} GiB available; use fewer --calibration-patches or minmax"
            )
    record = {"method": method, "crops": patches, "patches": len(calibration), "file_list": data}
    provenance = {**(provenance or {}), CALIBRATION_KEY: json.dumps(record, sort_keys=True)}
    with tempfile.TemporaryDirectory(prefix="dsen2cr-export-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", provenance=provenance)
        return quantize_onnx(fp32, out, calibration_batches(calibration, patches), method=method)
