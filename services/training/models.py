"""The model architectures: the paper's CNN-LSTM-GRU, harstream's hybrid and its earlier CNN.

All take a raw window ``(batch, 128, 9)`` named ``window`` (channels as in
``shared.dsp.CHANNELS``) and output 6 class probabilities, so any of them can be exported for
TF Serving and served by the same worker.

- ``paper``: the CNN-LSTM-GRU of the paper, layer for layer;
- ``harstream``: harstream's hybrid (convolutions → GRU → attention), served by default;
- ``cnn``: harstream's earlier pure CNN (``models/har/1``), kept to reproduce that version.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
from keras import layers, ops

from services.training.train import DEFAULT_RECURRENT_STEPS
from shared.activities import NUM_CLASSES

WINDOW_SHAPE = (128, 9)
#: Steps the hybrid's first two convolution blocks leave (each pools 2).
FRONT_STEPS = WINDOW_SHAPE[0] // 4
INPUT_NAME = "window"


def standardised(
    window: keras.KerasTensor, channel_mean: np.ndarray | None, channel_std: np.ndarray | None
) -> keras.KerasTensor:
    """``window`` standardised per channel with the training set's statistics (given), else
    as is: the only thing added in front of the paper's architectures."""
    if channel_mean is None or channel_std is None:
        return window
    return layers.Normalization(
        axis=-1, mean=channel_mean, variance=np.square(channel_std), name="normalise"
    )(window)


def build_paper_model(
    channel_mean: np.ndarray | None = None,
    channel_std: np.ndarray | None = None,
    gru_units: int = 64,
) -> keras.Model:
    """The CNN-LSTM-GRU of the paper, layer for layer.

    The paper leaves the GRU size unstated: 64 units (half the LSTM's). ``channel_mean`` and
    ``channel_std`` (9,): standardise the input first (see ``TrainConfig.standardise``).
    """
    window = keras.Input(shape=WINDOW_SHAPE, name=INPUT_NAME)
    x = layers.Reshape((4, 32, 9))(standardised(window, channel_mean, channel_std))
    x = layers.TimeDistributed(layers.Conv1D(64, 3, activation="relu"))(x)
    x = layers.TimeDistributed(layers.MaxPooling1D(2))(x)
    x = layers.TimeDistributed(layers.Flatten())(x)
    x = layers.LSTM(128, activation="relu", return_sequences=True)(x)
    x = layers.GRU(gru_units)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(window, probs, name="paper_cnn_lstm_gru")


@keras.saving.register_keras_serializable(package="harstream")
class RandomOrientation(layers.Layer):
    """Training-only augmentation: rotate every 3-axis sensor of a window by one random
    rotation (up to ``max_degrees`` about a random axis: a phone worn differently) and scale
    its amplitude slightly.

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
    separates sitting from standing far better than the motion does.

    ``gravity=False`` leaves the direction out (means and log spreads only)."""

    def __init__(self, gravity: bool = True, **kwargs: object):
        super().__init__(**kwargs)
        self.gravity = gravity

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "gravity": self.gravity}

    def call(self, inputs):  # type: ignore[no-untyped-def]
        mean = ops.mean(inputs, axis=1)
        # log scale: a still person sways by milli-g, a walking one by tenths of a g
        log_std = ops.log(ops.std(inputs, axis=1) + 1e-4)
        if not self.gravity:
            return ops.concatenate([mean, log_std], axis=-1)
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


def build_cnn_model(
    channel_mean: np.ndarray,
    channel_std: np.ndarray,
    width: int = 64,
    dropout: float = 0.3,
    augment: bool = True,
    max_degrees: float = 15.0,
    instance_branch: bool = True,
) -> keras.Model:
    """harstream's earlier model (``models/har/1``): a compact 1-D CNN over the normalised
    window, joined with window statistics that carry the orientation of gravity.

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


@keras.saving.register_keras_serializable(package="harstream")
class GravityTrajectory(layers.Layer):
    """Where gravity points in each quarter of the window and how far it turns across it.

    Gravity is ``total_acc - body_acc`` (the preprocessing's 0.3 Hz low-pass). The tilt of a
    waist-worn phone is what tells sitting (pelvis tipped back) from standing; a direction
    that is still turning says the wearer changed posture a moment ago, when the causal
    gravity filter has not settled yet and the mean direction alone misleads.
    Output: 4 unit vectors (12), first-to-last change (3), angle turned (rad, 1), mean
    gravity magnitude (g, 1).
    """

    def call(self, inputs):  # type: ignore[no-untyped-def]
        gravity = inputs[:, :, 6:9] - inputs[:, :, 0:3]
        quarters = ops.mean(ops.reshape(gravity, (-1, 4, WINDOW_SHAPE[0] // 4, 3)), axis=2)
        directions = quarters / (ops.norm(quarters, axis=-1, keepdims=True) + 1e-6)
        first, last = directions[:, 0, :], directions[:, -1, :]
        # atan2(|a × b|, a · b): exact near 0, where arccos of a rounded cosine is not
        turned = ops.arctan2(
            ops.norm(ops.cross(first, last), axis=-1), ops.sum(first * last, axis=-1)
        )[:, None]
        magnitude = ops.mean(ops.norm(gravity, axis=-1), axis=1)[:, None]
        return ops.concatenate(
            [ops.reshape(directions, (-1, 12)), last - first, turned, magnitude], axis=-1
        )


@keras.saving.register_keras_serializable(package="harstream")
class AttentionPooling(layers.Layer):
    """Softmax attention over time: a learned score per step, the weighted mean of the steps.

    Lets the classifier look at the few steps where a still posture shows itself (a shift
    of weight, a sway) instead of averaging them away.
    """

    def build(self, input_shape):  # type: ignore[no-untyped-def]
        self.score = layers.Dense(1, name="score")
        self.score.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):  # type: ignore[no-untyped-def]
        weights = ops.softmax(self.score(inputs), axis=1)
        return ops.sum(weights * inputs, axis=1)

    def compute_output_shape(self, input_shape):  # type: ignore[no-untyped-def]
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="harstream")
class LogBandEnergy(layers.Layer):
    """Log spectral energy of every channel in five bands (0-1, 1-3, 3-6, 6-12, 12-25 Hz):
    ``(batch, 128, channels)`` → ``(batch, 5 × channels)``.

    Standing sways: the body turns a little about the vertical (gyro x of an upright
    phone), at 0.1-3 Hz and milli-rad/s, where a seated body is still. On a log scale those
    energies differ by a constant between people instead of by a factor.
    """

    BANDS_HZ = ((0.0, 1.0), (1.0, 3.0), (3.0, 6.0), (6.0, 12.0), (12.0, 25.01))

    def __init__(self, sample_rate_hz: float = 50.0, **kwargs: object):
        super().__init__(**kwargs)
        self.sample_rate_hz = sample_rate_hz
        freqs = np.fft.rfftfreq(WINDOW_SHAPE[0], d=1.0 / sample_rate_hz)
        masks = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in self.BANDS_HZ], axis=1)
        masks[0, :] = False  # not the mean
        # one-sided spectrum: every bin but DC and Nyquist stands for two, so that the bands
        # add up to the channel's variance
        self.masks = (
            masks.astype("float32")
            * np.where((freqs > 0) & (freqs < sample_rate_hz / 2), 2.0, 1.0).astype("float32")[
                :, None
            ]
        )

    def call(self, inputs):  # type: ignore[no-untyped-def]
        centred = inputs - ops.mean(inputs, axis=1, keepdims=True)
        real, imag = ops.rfft(ops.transpose(centred, (0, 2, 1)))
        power = (ops.square(real) + ops.square(imag)) / float(WINDOW_SHAPE[0] ** 2)
        bands = ops.matmul(power, ops.convert_to_tensor(self.masks))  # (batch, 9, 5)
        return ops.reshape(ops.log(bands + 1e-8), (-1, inputs.shape[-1] * len(self.BANDS_HZ)))

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "sample_rate_hz": self.sample_rate_hz}


@keras.saving.register_keras_serializable(package="harstream")
class GravityFrame(layers.Layer):
    """The motion in the wearer's frame instead of the phone's: body acceleration along
    gravity and across it, and the turn rate about gravity (yaw) and across it (tilt).

    These do not change when the phone sits rotated on the belt, unlike the raw axes and
    the tilt itself, which differ from wearer to wearer: a standing body's yaw sway is the
    same signal whichever way the phone faces.
    Output channels: vertical body acc (g), horizontal body acc (g), yaw rate (rad/s),
    tilt rate (rad/s).
    """

    def call(self, inputs):  # type: ignore[no-untyped-def]
        body, gyro = inputs[:, :, 0:3], inputs[:, :, 3:6]
        gravity = inputs[:, :, 6:9] - body
        up = gravity / (ops.norm(gravity, axis=-1, keepdims=True) + 1e-6)
        vertical = ops.sum(body * up, axis=-1, keepdims=True)
        horizontal = ops.norm(body - vertical * up, axis=-1, keepdims=True)
        yaw = ops.sum(gyro * up, axis=-1, keepdims=True)
        tilt = ops.norm(gyro - yaw * up, axis=-1, keepdims=True)
        return ops.concatenate([vertical, horizontal, yaw, tilt], axis=-1)


def _conv_block(x, filters: int, kernel: int, pool: int):  # type: ignore[no-untyped-def]
    x = layers.Conv1D(filters, kernel, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.MaxPooling1D(pool)(x) if pool > 1 else x


def build_hybrid_model(
    channel_mean: np.ndarray,
    channel_std: np.ndarray,
    width: int = 64,
    recurrent: Literal["gru", "lstm"] = "gru",
    recurrent_units: int = 64,
    bidirectional: bool = False,
    attention: bool = True,
    multiscale: bool = True,
    dropout: float = 0.3,
    augment: bool = True,
    max_degrees: float = 10.0,
    gravity_features: bool = True,
    spectral_features: bool = False,
    gravity_frame: bool = False,
    recurrent_steps: int = DEFAULT_RECURRENT_STEPS,
) -> keras.Model:
    """harstream's hybrid: a convolutional front end, a recurrent temporal block and
    attention, joined with window statistics and the gravity trajectory.

    The front end reads the normalised window beside each window scaled by its own spread
    (:class:`InstanceStandardise`); with ``multiscale`` its first layer has kernels of 3, 7
    and 15 samples (60 ms to 0.3 s: a footstep's impact to a sway) side by side. Three poolings
    leave ``recurrent_steps`` steps for the recurrent block (16 of 160 ms; 8 of 320 ms when
    the third pools 4), so it costs little per window.
    ``channel_mean``/``channel_std`` (9,) are the training set's, baked into the model.
    """
    if recurrent_steps < 1 or FRONT_STEPS % recurrent_steps:
        # the third block pools the front's steps to this many
        raise ValueError(f"recurrent_steps must divide {FRONT_STEPS}, not {recurrent_steps}")
    window = keras.Input(shape=WINDOW_SHAPE, name=INPUT_NAME)
    raw = RandomOrientation(max_degrees=max_degrees, name="augment")(window) if augment else window
    parts = [WindowStatistics(gravity=gravity_features, name="window_statistics")(raw)]
    if gravity_features:
        parts.append(GravityTrajectory(name="gravity_trajectory")(raw))
    if spectral_features:
        parts.append(LogBandEnergy(name="band_energy")(raw))
    frame = GravityFrame(name="gravity_frame")(raw) if gravity_frame else None
    if frame is not None:
        parts.append(LogBandEnergy(name="frame_band_energy")(frame))
    stats = layers.Concatenate(name="statistics")(parts) if len(parts) > 1 else parts[0]
    stats = layers.Normalization(name="stats_norm")(stats)
    x = layers.Normalization(
        axis=-1, mean=channel_mean, variance=np.square(channel_std), name="normalise"
    )(raw)
    inputs = [x, InstanceStandardise(name="instance_standardise")(raw)]
    if frame is not None:
        inputs.append(layers.Normalization(name="frame_norm")(frame))
    x = layers.Concatenate()(inputs)
    if multiscale:
        x = layers.Concatenate()(
            [layers.Conv1D(width // 2, k, padding="same", use_bias=False)(x) for k in (3, 7, 15)]
        )
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling1D(2)(x)
    else:
        x = _conv_block(x, width, 7, 2)
    x = _conv_block(x, width, 5, 2)
    x = _conv_block(x, 2 * width, 3, FRONT_STEPS // recurrent_steps)
    cell = layers.GRU if recurrent == "gru" else layers.LSTM
    rnn = cell(recurrent_units, return_sequences=True)
    seq = layers.Bidirectional(rnn)(x) if bidirectional else rnn(x)
    pooled = [AttentionPooling(name="attention")(seq)] if attention else []
    pooled += [layers.GlobalAveragePooling1D()(seq), seq[:, -1, :]]
    x = layers.Concatenate()(pooled)
    s = layers.Dense(32, activation="relu")(stats)
    x = layers.Concatenate()([x, s])
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(window, probs, name="harstream_hybrid")
