"""Running an exported ONNX file (fp32 or int8, from :mod:`dsen2cr.onnx_export`) with onnxruntime: the
``onnxruntime`` backend (docs/design.md §4.2), and the names of the files' inputs, outputs and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsen2cr.errors import DSen2CRError
from dsen2cr.machine import limited_cores
from dsen2cr.outputs.files import check_input_file
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.weights import CONFIG_KEY, FAMILY_KEY, config_from_metadata

S2_INPUT, S1_INPUT, OUTPUT = "s2_cloudy", "s1", "s2_cloudfree"
#: The second output of a model with uncertainty: the variance per band and pixel (model units squared).
VARIANCE_OUTPUT = "variance"
#: Metadata key of the precision of exported ONNX files (the model configuration rides as in weights files).
PRECISION_KEY = "dsen2cr.precision"
#: An exported file's arithmetic, in words (the outputs' ``DSEN2CR_ARITHMETIC``).
ONNX_WORDS = {"fp32": "IEEE fp32 by onnxruntime", "int8": "int8 convolutions by onnxruntime (static quantisation)"}


class OnnxPredictor:
    """Run an exported DSen2-CR with onnxruntime; checks that the file has the expected inputs and output."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DSen2CRError("onnxruntime is not installed: pip install 'dsen2cr[onnx]'") from None
        path = check_input_file(path, "ONNX")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        options = ort.SessionOptions()
        threads = limited_cores()  # onnxruntime sizes its pool by the machine, not a container's quota
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
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
        names = [output.name for output in outputs]
        shapes_ok = all(len(o.shape) == 4 and o.shape[1] == NUM_S2_BANDS for o in outputs)
        one_or_both = len(names) == 1 or names == [OUTPUT, VARIANCE_OUTPUT]
        if not (shapes_ok and one_or_both):
            raise DSen2CRError(
                f"{path}: ONNX outputs must be one (N, 13, H, W) tensor, or {OUTPUT} and {VARIANCE_OUTPUT}"
            )
        self.output = outputs[0].name
        self.uncertainty = "diag" if names == [OUTPUT, VARIANCE_OUTPUT] else "none"
        self.include_sar = S1_INPUT in inputs
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise DSen2CRError(f"{path}: ONNX file lacks the dsen2cr model configuration (export it with dsen2cr)")
        self.config = config_from_metadata(metadata[CONFIG_KEY], path, metadata.get(FAMILY_KEY))
        if self.config.include_sar != self.include_sar:
            raise DSen2CRError(f"{path}: ONNX inputs and the stored model configuration disagree about SAR")
        if self.config.uncertainty != self.uncertainty:
            raise DSen2CRError(f"{path}: ONNX outputs and the stored model configuration disagree about uncertainty")
        self.precision = metadata.get(PRECISION_KEY, "fp32")
        self.arithmetic = ONNX_WORDS.get(self.precision, f"{self.precision} by onnxruntime")

    def feeds(self, s2: np.ndarray, s1: np.ndarray | None) -> dict[str, np.ndarray]:
        """The session inputs for a batch in model units."""
        feeds = {S2_INPUT: np.ascontiguousarray(s2, dtype=np.float32)}
        if self.include_sar:
            if s1 is None:
                raise DSen2CRError("this ONNX model needs the S1 input")
            feeds[S1_INPUT] = np.ascontiguousarray(s1, dtype=np.float32)
        return feeds

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict a batch in model units (the prediction only: a variance output is not computed)."""
        return self.session.run([self.output], self.feeds(s2, s1))[0]

    def predict_with_variance(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The prediction and its variance of a batch, for a file with both outputs."""
        if self.uncertainty != "diag":
            raise DSen2CRError("this ONNX model has no variance output")
        mean, variance = self.session.run([OUTPUT, VARIANCE_OUTPUT], self.feeds(s2, s1))
        return mean, variance
