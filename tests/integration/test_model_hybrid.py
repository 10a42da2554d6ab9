"""harstream's hybrid model: its layers on hand-made windows, its shape, and training that
repeats bit for bit per seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.dataset import WindowSet

RATE_HZ = 50.0


def _still(direction: np.ndarray, n: int = 2) -> np.ndarray:
    """Windows of a still device: total acceleration = gravity along ``direction``."""
    windows = np.zeros((n, 128, 9), np.float32)
    windows[:, :, 6:9] = direction / np.linalg.norm(direction)
    return windows


def test_gravity_trajectory_of_a_still_device() -> None:
    from services.training.models import GravityTrajectory

    out = np.asarray(GravityTrajectory()(_still(np.array([0.0, -1.0, 0.0]))))
    assert out.shape == (2, 17)
    np.testing.assert_allclose(out[0, :12].reshape(4, 3), [[0, -1, 0]] * 4, atol=1e-5)
    np.testing.assert_allclose(out[0, 12:15], 0.0, atol=1e-5)  # no change
    assert out[0, 15] == pytest.approx(0.0, abs=1e-6)  # angle turned
    assert out[0, 16] == pytest.approx(1.0, rel=1e-5)  # 1 g


def test_gravity_trajectory_follows_a_turning_device() -> None:
    from services.training.models import GravityTrajectory

    angle = np.linspace(0, np.pi / 2, 128)  # gravity turns from x to y over the window
    windows = np.zeros((1, 128, 9), np.float32)
    windows[0, :, 6] = np.cos(angle)
    windows[0, :, 7] = np.sin(angle)
    windows[0, :, 0] = 0.05  # body acceleration is not gravity: subtracted
    out = np.asarray(GravityTrajectory()(windows))[0]
    quarters = (windows[0, :, 6:9] - windows[0, :, 0:3]).reshape(4, 32, 3).mean(axis=1)
    quarters /= np.linalg.norm(quarters, axis=1, keepdims=True)
    np.testing.assert_allclose(out[:12].reshape(4, 3), quarters, atol=1e-5)
    np.testing.assert_allclose(out[12:15], quarters[3] - quarters[0], atol=1e-5)
    assert out[15] == pytest.approx(np.arccos(quarters[0] @ quarters[3]), abs=1e-3)


def test_gravity_frame_separates_yaw_from_tilt_whichever_way_the_phone_faces() -> None:
    from scipy.spatial.transform import Rotation

    from services.training.models import GravityFrame

    t = np.arange(128) / RATE_HZ
    windows = _still(np.array([0.0, -1.0, 0.0]), n=1)
    windows[0, :, 4] = 0.02 * np.sin(2 * np.pi * 0.5 * t)  # turning about gravity (yaw)
    windows[0, :, 3] = 0.01  # and tipping about x (tilt)
    windows[0, :, 1] = -0.1 * np.sin(2 * np.pi * 2 * t)  # bouncing along gravity
    windows[0, :, 7] += windows[0, :, 1]
    out = np.asarray(GravityFrame()(windows))[0]
    np.testing.assert_allclose(out[:, 0], 0.1 * np.sin(2 * np.pi * 2 * t), atol=1e-5)
    np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-5)  # nothing across gravity
    np.testing.assert_allclose(out[:, 2], -windows[0, :, 4], atol=1e-6)  # up is -y
    np.testing.assert_allclose(out[:, 3], 0.01, atol=1e-6)
    # the same motion with the phone turned any way on the belt: the same four channels
    rotation = Rotation.from_euler("xyz", [30, -70, 120], degrees=True).as_matrix()
    turned = np.concatenate([windows[0, :, i : i + 3] @ rotation.T for i in (0, 3, 6)], axis=1)
    np.testing.assert_allclose(
        np.asarray(GravityFrame()(turned[None].astype(np.float32)))[0], out, atol=1e-5
    )


def test_band_energy_puts_a_sine_in_its_band() -> None:
    from services.training.models import LogBandEnergy

    t = np.arange(128) / RATE_HZ
    windows = np.zeros((1, 128, 9), np.float32)
    windows[0, :, 3] = 0.2 + np.sin(2 * np.pi * 2.0 * t)  # 2 Hz, offset ignored
    out = np.asarray(LogBandEnergy()(windows)).reshape(9, 5)
    assert out[3].argmax() == 1  # the 1-3 Hz band
    # the bands together hold the variance of the sine (0.5), on a log scale
    assert np.exp(out[3]).sum() == pytest.approx(0.5, rel=0.02)
    assert out[0].max() == pytest.approx(np.log(1e-8), abs=1e-3)  # a flat channel


def test_attention_pooling_weights_sum_to_one() -> None:
    from services.training.models import AttentionPooling

    same = np.tile(np.arange(8, dtype=np.float32), (3, 16, 1))  # every step equal
    np.testing.assert_allclose(np.asarray(AttentionPooling()(same)), same[:, 0, :], rtol=1e-5)
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(3, 16, 8)).astype(np.float32)
    pooled = np.asarray(AttentionPooling()(steps))
    assert pooled.shape == (3, 8)
    # a convex combination of the steps: inside their range on every feature
    assert (pooled <= steps.max(axis=1) + 1e-6).all()
    assert (pooled >= steps.min(axis=1) - 1e-6).all()


def test_hybrid_has_a_recurrent_block_and_the_serving_input() -> None:
    from services.training.models import build_hybrid_model

    model = build_hybrid_model(np.zeros(9), np.ones(9))
    kinds = {layer.__class__.__name__ for layer in model.layers}
    assert {"Conv1D", "GRU", "AttentionPooling", "GravityTrajectory"} <= kinds
    assert model.input_shape == (None, 128, 9)
    assert model.inputs[0].name == "window"
    assert model.output_shape == (None, 6)
    lstm = build_hybrid_model(np.zeros(9), np.ones(9), recurrent="lstm", attention=False)
    assert "LSTM" in {layer.__class__.__name__ for layer in lstm.layers}


@pytest.mark.parametrize("steps", [16, 8])
def test_recurrent_block_reads_the_configured_steps(steps: int) -> None:
    from services.training.models import build_hybrid_model

    model = build_hybrid_model(np.zeros(9), np.ones(9), width=16, recurrent_steps=steps)
    (gru,) = [layer for layer in model.layers if layer.__class__.__name__ == "GRU"]
    assert gru.input.shape[1:] == (steps, 32)  # the third block's 2 × width channels
    assert np.asarray(model(np.zeros((2, 128, 9), np.float32))).shape == (2, 6)


@pytest.mark.parametrize("steps", [0, 3, 64])
def test_recurrent_steps_that_do_not_divide_the_fronts_steps_are_refused(steps: int) -> None:
    from services.training.models import build_hybrid_model

    with pytest.raises(ValueError, match=f"must divide 32, not {steps}"):
        build_hybrid_model(np.zeros(9), np.ones(9), width=16, recurrent_steps=steps)


@pytest.fixture(scope="module")
def small_sets(window_sets):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    train: WindowSet = window_sets["train"]
    validation: WindowSet = window_sets["validation"]
    return (
        train.where(rng.random(len(train)) < 0.05),
        validation.where(rng.random(len(validation)) < 0.2),
    )


def test_training_repeats_bit_for_bit_per_seed(small_sets) -> None:  # type: ignore[no-untyped-def]
    """The recipe's soft targets, mixup, cosine schedule and EMA all seeded: the same seed
    gives the same weights, another seed other weights."""
    from services.training.train import TrainConfig, train_model

    train, validation = small_sets
    config = replace(
        TrainConfig.default_for("harstream"),
        epochs=1,
        width=16,
        recurrent_units=8,
        mixup=0.2,
        label_smoothing=0.1,
        schedule="cosine",
        selection="val_accuracy",
    )
    x = validation.x[:64]
    first = train_model(config, train, validation, verbose=0).model.predict(x, verbose=0)
    again = train_model(config, train, validation, verbose=0).model.predict(x, verbose=0)
    other = train_model(replace(config, seed=1), train, validation, verbose=0)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other.model.predict(x, verbose=0))


def test_distillation_targets_replace_the_labels(small_sets) -> None:  # type: ignore[no-untyped-def]
    from services.training.train import TrainConfig, train_model

    train, validation = small_sets
    config = replace(
        TrainConfig.default_for("harstream"),
        epochs=3,
        width=16,
        recurrent_units=8,
        ema=False,
        selection="last",
        learning_rate=3e-3,
    )
    # a teacher that calls everything LAYING: the student learns that, not the labels
    teacher = np.zeros((len(train), 6), np.float32)
    teacher[:, 5] = 1.0
    result = train_model(config, train, validation, verbose=0, teacher=teacher)
    predicted = result.model.predict(validation.x, verbose=0).argmax(axis=1)
    assert (predicted == 5).mean() > 0.9
