"""The two model architectures: the paper's CNN-LSTM-GRU and harstream's own.

Both take a raw window ``(batch, 128, 9)`` named ``window`` (channels as in
``shared.dsp.CHANNELS``) and output 6 class probabilities, so either can be exported for
TF Serving and served by the same worker.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
from keras import layers, ops

from shared.activities import NUM_CLASSES

ModelKind = Literal["paper", "harstream"]
WINDOW_SHAPE = (128, 9)
INPUT_NAME = "window"


def build_paper_model(gru_units: int = 64) -> keras.Model:
    """The CNN-LSTM-GRU of the paper, layer for layer.

    The paper leaves the GRU size unstated: 64 units (half the LSTM's).
    """
    window = keras.Input(shape=WINDOW_SHAPE, name=INPUT_NAME)
    x = layers.Reshape((4, 32, 9))(window)
    x = layers.TimeDistributed(layers.Conv1D(64, 3, activation="relu"))(x)
    x = layers.TimeDistributed(layers.MaxPooling1D(2))(x)
    x = layers.TimeDistributed(layers.Flatten())(x)
    x = layers.LSTM(128, activation="relu", return_sequences=True)(x)
    x = layers.GRU(gru_units)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(window, probs, name="paper_cnn_lstm_gru")


@keras.saving.register_keras_serializable(package="harstream")
class RandomOrientation(layers.Layer):
    """Training-only augmentation: rotate every 3-axis sensor of a window by one small random
    rotation (a phone worn a little differently) and scale its amplitude slightly.

    Acts only when ``training=True``; at inference it is the identity, so the exported model
    is unaffected.
    """

    def __init__(self, max_degrees: float = 15.0, max_scale: float = 0.1, **kwargs: object):
        super().__init__(**kwargs)
        self.max_degrees = max_degrees
        self.max_scale = max_scale
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs, training=None):  # type: ignore[no-untyped-def]
        if not training:
            return inputs
        batch = ops.shape(inputs)[0]
        axis = keras.random.normal((batch, 3), seed=self.seed_generator)
        axis = axis / (ops.norm(axis, axis=-1, keepdims=True) + 1e-8)
        angle = keras.random.uniform((batch, 1, 1), -1.0, 1.0, seed=self.seed_generator) * (
            self.max_degrees * np.pi / 180.0
        )
        # Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2
        ax, ay, az = axis[:, 0], axis[:, 1], axis[:, 2]
        zero = ops.zeros_like(ax)
        k = ops.stack(
            [
                ops.stack([zero, -az, ay], axis=-1),
                ops.stack([az, zero, -ax], axis=-1),
                ops.stack([-ay, ax, zero], axis=-1),
            ],
            axis=1,
        )
        eye = ops.eye(3)[None, :, :]
        rot = eye + ops.sin(angle) * k + (1.0 - ops.cos(angle)) * ops.matmul(k, k)
        scale = 1.0 + keras.random.uniform(
            (batch, 1, 1), -self.max_scale, self.max_scale, seed=self.seed_generator
        )
        parts = [
            ops.matmul(inputs[:, :, i : i + 3], ops.transpose(rot, (0, 2, 1))) for i in (0, 3, 6)
        ]
        return ops.concatenate(parts, axis=-1) * scale

    def get_config(self) -> dict[str, object]:
        return {
            **super().get_config(),
            "max_degrees": self.max_degrees,
            "max_scale": self.max_scale,
        }


@keras.saving.register_keras_serializable(package="harstream")
class WindowStatistics(layers.Layer):
    """Per-window summary: mean and standard deviation of every channel, and the direction
    of gravity (mean total acceleration, normalised): posture is in that direction, which
    separates sitting from standing far better than the motion does."""

    def call(self, inputs):  # type: ignore[no-untyped-def]
        mean = ops.mean(inputs, axis=1)
        # log scale: a still person sways by milli-g, a walking one by tenths of a g
        log_std = ops.log(ops.std(inputs, axis=1) + 1e-4)
        gravity = ops.mean(inputs[:, :, 6:9] - inputs[:, :, 0:3], axis=1)
        direction = gravity / (ops.norm(gravity, axis=-1, keepdims=True) + 1e-6)
        return ops.concatenate([mean, log_std, direction], axis=-1)


@keras.saving.register_keras_serializable(package="harstream")
class InstanceStandardise(layers.Layer):
    """Each window scaled by its own per-channel spread: shows the *shape* of small motions
    (postural sway) that a fleet-wide normalisation flattens to nothing."""

    def call(self, inputs):  # type: ignore[no-untyped-def]
        centred = inputs - ops.mean(inputs, axis=1, keepdims=True)
        return centred / (ops.std(inputs, axis=1, keepdims=True) + 1e-3)


def build_harstream_model(
    channel_mean: np.ndarray,
    channel_std: np.ndarray,
    width: int = 64,
    dropout: float = 0.3,
    augment: bool = True,
    max_degrees: float = 15.0,
    instance_branch: bool = True,
) -> keras.Model:
    """harstream's model: a compact 1-D CNN over the normalised window, joined with
    window statistics that carry the orientation of gravity.

    ``channel_mean``/``channel_std`` (9,) are the training set's, baked into the model so it
    is served on raw windows.
    """
    window = keras.Input(shape=WINDOW_SHAPE, name=INPUT_NAME)
    raw = RandomOrientation(max_degrees=max_degrees, name="augment")(window) if augment else window
    stats = WindowStatistics(name="window_statistics")(raw)
    stats = layers.Normalization(name="stats_norm")(stats)
    x = layers.Normalization(
        axis=-1, mean=channel_mean, variance=np.square(channel_std), name="normalise"
    )(raw)
    if instance_branch:
        x = layers.Concatenate()([x, InstanceStandardise(name="instance_standardise")(raw)])
    for filters, kernel, pool in (
        (width, 7, 2),
        (width, 5, 2),
        (2 * width, 5, 2),
        (2 * width, 3, 1),
    ):
        x = layers.Conv1D(filters, kernel, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        if pool > 1:
            x = layers.MaxPooling1D(pool)(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    s = layers.Dense(32, activation="relu")(stats)
    x = layers.Concatenate()([x, s])
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(window, probs, name="harstream_cnn")
