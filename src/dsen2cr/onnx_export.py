"""ONNX export (dynamic batch, height and width) and an onnxruntime predictor for scene inference, for users
who deploy without PyTorch. The model configuration rides in the ONNX metadata."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.geotiff import atomic_path
from dsen2cr.model import DSen2CR, ModelConfig
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.weights import CONFIG_KEY

S2_INPUT, S1_INPUT, OUTPUT = "s2_cloudy", "s1", "s2_cloudfree"


def export_onnx(model: DSen2CR, out: str | Path, *, opset: int | None = None) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width; write it atomically."""
    import onnx

    model = model.cpu().eval()
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
            model,
            args,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_shapes=shapes,
            dynamo=True,
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, json.dumps(model.config.to_dict())
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)


class OnnxPredictor:
    """Run an exported DSen2-CR with onnxruntime; checks that the file has the expected inputs and output."""

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DSen2CRError("onnxruntime is not installed: pip install 'dsen2cr[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise DSen2CRError(f"{path}: ONNX file not found")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise DSen2CRError(f"{path}: not a readable ONNX model ({' '.join(str(error).split())[:200]})") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()
        expected_inputs = {S2_INPUT: NUM_S2_BANDS, S1_INPUT: NUM_S1_BANDS}
        if S2_INPUT not in inputs or set(inputs) - set(expected_inputs):
            raise DSen2CRError(f"{path}: ONNX inputs {sorted(inputs)}; expected {S2_INPUT} and optionally {S1_INPUT}")
        for name, shape in inputs.items():
            if len(shape) != 4 or shape[1] != expected_inputs[name]:
                raise DSen2CRError(
                    f"{path}: ONNX input {name} has shape {shape}, expected (N, {expected_inputs[name]}, H, W)"
                )
        if len(outputs) != 1 or len(outputs[0].shape) != 4 or outputs[0].shape[1] != NUM_S2_BANDS:
            raise DSen2CRError(f"{path}: ONNX output must be one (N, 13, H, W) tensor")
        self.include_sar = S1_INPUT in inputs
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise DSen2CRError(f"{path}: ONNX file lacks the dsen2cr model configuration (export it with dsen2cr)")
        self.config = ModelConfig(**json.loads(metadata[CONFIG_KEY]))

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict a batch in model units."""
        feeds = {S2_INPUT: np.ascontiguousarray(s2, dtype=np.float32)}
        if self.include_sar:
            if s1 is None:
                raise DSen2CRError("this ONNX model needs the S1 input")
            feeds[S1_INPUT] = np.ascontiguousarray(s1, dtype=np.float32)
        return self.session.run(None, feeds)[0]
