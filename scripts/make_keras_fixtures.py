"""Make the Keras test fixtures (run by hand; needs TensorFlow and tf_keras, not the project's test set-up).

Builds small models with the layer structure of the original DSen2-CR Keras code (head conv + ReLU,
residual blocks of conv, ReLU, conv, x0.1 Lambda, Add; tail conv; long skip Add; SAR concatenated on the
channel axis), with 5 blocks (12 conv layers, so that sorting layer names would misorder them), 8 features,
random He-uniform kernels and random biases, and saves them with Keras in both file kinds:

- ``keras224_full_sar.h5``: a full model (``model.save``) with Keras 2.2.4's layer names conv2d_1 ... conv2d_12;
- ``keras_weights_nosar.h5``: weights only (``save_weights``), later Keras's names conv2d, conv2d_1, ...;
- ``keras224_multigpu_sar.h5``: a full model whose convolutions sit in a nested model, as
  ``multi_gpu_model`` saves them;
- ``keras_weights_multigpu_nosar.h5``: the same nesting, weights only.

``keras_outputs.npz`` stores a fixed input (NCHW, model units) and each model's output, computed by Keras.
The original used ``channels_first``; TensorFlow's CPU convolution needs ``channels_last``, so the models
here are built channels-last. Conv kernels are stored as (kh, kw, in, out) in both cases, so the files are
laid out as the original's; inputs and outputs are transposed to NCHW for the fixture.

Usage: ``python scripts/make_keras_fixtures.py [OUT_DIR]`` (default tests/fixtures/keras).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tf_keras as keras
from tf_keras import layers

BLOCKS, FEATURES, SIZE = 5, 8, 24


def build(include_sar: bool, names: list[str] | None, seed: int) -> keras.Model:
    """A DSen2-CR-structured Keras model; ``names`` gives the conv layers' names in creation order."""
    rng = np.random.default_rng(seed)
    names = list(names) if names else [None] * (2 * BLOCKS + 2)
    conv_names = iter(names)
    s2 = keras.Input(shape=(SIZE, SIZE, 13), name="input_1")
    s1 = keras.Input(shape=(SIZE, SIZE, 2), name="input_2")
    x = layers.Concatenate(axis=-1)([s2, s1]) if include_sar else s2

    def conv(t: object, filters: int) -> object:
        return layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_uniform", name=next(conv_names))(t)

    x = layers.Activation("relu")(conv(x, FEATURES))
    for _ in range(BLOCKS):
        t = conv(layers.Activation("relu")(conv(x, FEATURES)), FEATURES)
        t = layers.Lambda(lambda v: v * 0.1)(t)
        x = layers.Add()([x, t])
    x = layers.Add()([conv(x, 13), s2])
    model = keras.Model(inputs=[s2, s1], outputs=x)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-0.1, 0.1, size=bias.shape).astype(np.float32)])
    return model


def nest(inner: keras.Model) -> keras.Model:
    """Wrap a model as one layer of an outer model, as keras.utils.multi_gpu_model saved it."""
    s2 = keras.Input(shape=(SIZE, SIZE, 13), name="outer_s2")
    s1 = keras.Input(shape=(SIZE, SIZE, 2), name="outer_s1")
    return keras.Model(inputs=[s2, s1], outputs=inner([s2, s1]))


def main() -> None:
    """Write the fixtures."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests/fixtures/keras"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    s2 = rng.uniform(0, 2, size=(2, 13, SIZE, SIZE)).astype(np.float32)
    s1 = rng.uniform(0, 2, size=(2, 2, SIZE, SIZE)).astype(np.float32)
    nhwc = [np.transpose(a, (0, 2, 3, 1)) for a in (s2, s1)]
    keras224_names = [f"conv2d_{i}" for i in range(1, 2 * BLOCKS + 3)]
    outputs = {"s2": s2, "s1": s1}
    models = {
        "keras224_full_sar": (build(True, keras224_names, 1), "full"),
        "keras_weights_nosar": (build(False, None, 2), "weights"),
        "keras224_multigpu_sar": (nest(build(True, keras224_names, 3)), "full"),
        "keras_weights_multigpu_nosar": (nest(build(False, None, 4)), "weights"),
    }
    for name, (model, kind) in models.items():
        path = out / f"{name}.h5"
        if kind == "full":
            model.save(path, save_format="h5", include_optimizer=False)
        else:
            model.save_weights(path, save_format="h5")
        outputs[name] = np.transpose(model.predict(nhwc, verbose=0), (0, 3, 1, 2))
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    np.savez_compressed(out / "keras_outputs.npz", **outputs)


if __name__ == "__main__":
    main()
