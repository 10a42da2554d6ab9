"""Training recipes and model cards: the pure parts (no TensorFlow)."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import pytest

from services.training.export import render_model_card
from services.training.train import MODEL_KINDS, TrainConfig, mixup_batch, one_hot, rotate_batch
from shared.activities import ACTIVITIES, NUM_CLASSES
from shared.classification import classification_report
from shared.dsp import PreprocessingConfig


def test_training_module_imports_without_tensorflow() -> None:
    if "keras" not in sys.modules:  # only meaningful when nothing else loaded it first
        assert "tensorflow" not in sys.modules


def test_one_hot_rows_are_distributions_with_smoothing_spread_evenly() -> None:
    y = np.array([0, 5, 3])
    plain = one_hot(y)
    np.testing.assert_array_equal(plain.argmax(axis=1), y)
    np.testing.assert_array_equal(plain.sum(axis=1), 1.0)
    assert set(np.unique(plain)) == {0.0, 1.0}
    smooth = one_hot(y, 0.12)
    np.testing.assert_allclose(smooth.sum(axis=1), 1.0, rtol=1e-6)
    assert smooth[0, 0] == pytest.approx(1 - 0.12 + 0.02)
    assert smooth[0, 1] == pytest.approx(0.02)


def test_mixup_keeps_each_window_dominant_and_targets_mixed_alike() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 128, 9)).astype(np.float32)
    targets = one_hot(rng.integers(0, NUM_CLASSES, 32))
    mixed_x, mixed_t = mixup_batch(x, targets, 0.4, np.random.default_rng(1))
    assert mixed_x.shape == x.shape and mixed_x.dtype == np.float32
    np.testing.assert_allclose(mixed_t.sum(axis=1), 1.0, rtol=1e-6)
    # each row's own label keeps at least half the weight
    own = mixed_t[np.arange(32), targets.argmax(axis=1)]
    assert (own >= 0.5 - 1e-6).all()
    # windows and targets are mixed with the same weight and the same partner
    rng = np.random.default_rng(1)
    lam = rng.beta(0.4, 0.4, size=32).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    partner = rng.permutation(32)
    expected_x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[partner]
    np.testing.assert_allclose(mixed_x, expected_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        mixed_t, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner], rtol=1e-6
    )
    assert not np.allclose(mixed_x, x)


def test_rotation_turns_all_three_sensors_alike_within_the_bound() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 128, 9)).astype(np.float32)
    same = rotate_batch(x, 0.0, np.random.default_rng(1), max_scale=0.0)
    np.testing.assert_allclose(same, x, atol=1e-6)
    turned = rotate_batch(x, 20.0, np.random.default_rng(1), max_scale=0.0)
    for first in (0, 3, 6):  # lengths kept, angles within 20°
        a, b = x[:, :, first : first + 3], turned[:, :, first : first + 3]
        np.testing.assert_allclose(np.linalg.norm(b, axis=2), np.linalg.norm(a, axis=2), rtol=1e-4)
        cosine = (a * b).sum(axis=2) / np.linalg.norm(a, axis=2) / np.linalg.norm(b, axis=2)
        assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() <= 20.0 + 1e-3
    # one rotation per window: the angle between two sensors of a window is unchanged
    dot = lambda w: (w[:, :, 0:3] * w[:, :, 6:9]).sum(axis=2)  # noqa: E731
    np.testing.assert_allclose(dot(turned), dot(x), rtol=1e-3, atol=1e-4)
    assert not np.allclose(turned, x)
    scaled = rotate_batch(x, 0.0, np.random.default_rng(1), max_scale=0.1)
    ratio = np.linalg.norm(scaled, axis=2) / np.linalg.norm(x, axis=2)
    assert ((ratio > 0.9 - 1e-5) & (ratio < 1.1 + 1e-5)).all()


def test_every_kind_has_a_recipe() -> None:
    for kind in MODEL_KINDS:
        config = TrainConfig.default_for(kind, seed=3)
        assert (config.kind, config.seed) == (kind, 3)
        assert config.epochs > 0 and config.batch_size > 0
    assert TrainConfig.default_for("harstream").soft_targets == (
        TrainConfig.default_for("harstream").label_smoothing > 0
        or TrainConfig.default_for("harstream").mixup > 0
    )


def _card() -> dict[str, object]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES, 200)
    predicted = np.where(rng.random(200) < 0.9, y, (y + 1) % NUM_CLASSES)
    report = classification_report(y, predicted, ACTIVITIES).to_dict()
    config = asdict(TrainConfig.default_for("harstream", seed=2))
    pre = PreprocessingConfig()
    return {
        "name": "har-harstream",
        "version": 7,
        "architecture": "hybrid",
        "training_command": "harstream train --model harstream --seed 2",
        "data": "UCI HAPT",
        "preprocessing": {**pre.to_dict(), "fingerprint": pre.fingerprint},
        "metrics": {"test": report},
        "training": {"config": config, "best_epoch": 9, "epochs_run": 30, "train_seconds": 61.0},
        "throughput": {
            "batches": {"64": {"windows_per_second": 12345, "p50_ms_per_batch": 5.1}},
            "cpus": 2,
            "machine": "x86_64",
            "load_average_1min": 1.5,
            "method": "serving_default in process",
        },
    }


def test_model_card_shows_confusion_matrix_recipe_and_throughput() -> None:
    card = _card()
    text = render_model_card(card)
    report = card["metrics"]["test"]  # type: ignore[index]
    assert PreprocessingConfig().fingerprint in text
    assert "harstream train --model harstream --seed 2" in text
    # one confusion row per class, with the counts of the report
    first = report["confusion_matrix"][0]  # type: ignore[index]
    assert "| Walking | " + " | ".join(map(str, first)) + " |" in text
    assert text.count("| true \\ predicted |") == 1
    assert "seed 2 (deterministic" in text
    assert "| 64 | 12,345 | 5.10 |" in text
    assert "Kept epoch 9 of 30" in text


def test_comparison_table_has_means_per_seed_rows_and_recipes() -> None:
    from services.training.comparison import DEEP_ROWS, render_table

    def row(seed: int, accuracy: float) -> dict[str, float | int | str]:
        return {
            "seed": seed,
            "validation_accuracy": accuracy - 0.01,
            "accuracy": accuracy,
            "precision": accuracy,
            "recall": accuracy,
            "f1": accuracy,
            "seconds": 10.0,
            "best_epoch": 7,
        }

    rows = {
        "KNN": [{"seed": 0, "accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9,
                 "seconds": 0.0}],
        "CNN-LSTM-GRU (paper)": [row(0, 0.92), row(1, 0.93), row(2, 0.94)],
    }  # fmt: skip
    sizes = {"train": range(5), "validation": range(2), "test": range(3)}
    table = render_table(rows, sizes, [0, 1, 2], 120.0)
    assert "| CNN-LSTM-GRU (paper) | 91.8 | 91.7 / 90.25 / 90.47 | 93.00 ± 1.00 |" in table
    assert "| KNN | 85 | – | 90.00 |" in table
    assert "| CNN-LSTM-GRU (paper) | 1 | 92.00 | 93.00 | 93.00 | 7 | 10 |" in table
    for kind in DEEP_ROWS.values():
        assert f"(`{kind}`)" in table
    assert "seeds 0, 1, 2 (deterministic" in table


def test_paper_and_lstm_recipe_is_stated_and_selected_on_validation() -> None:
    from services.training.export import describe_recipe

    for kind in ("paper", "lstm"):
        config = TrainConfig.default_for(kind)  # type: ignore[arg-type]
        assert config.standardise and config.data_rotation > 0 and config.ema
        assert config.selection == "val_accuracy" and config.schedule == "cosine"
        text = describe_recipe(asdict(config))
        for words in (
            "AdamW (weight decay 0.01)",
            "cosine decay",
            "batch 64",
            "at most 30 epochs",
            "gradient clipping at global norm 1",
            "label smoothing 0.1",
            "random rotation ±10° and scale ±10 % of every training window",
            "inputs standardised per channel",
            "highest validation accuracy",
        ):
            assert words in text, (kind, words)


def test_teachers_of_seed_zero_are_the_recipes_own_seeds() -> None:
    from dataclasses import replace

    config = replace(TrainConfig.default_for("harstream", seed=0), teachers=3)
    teachers = config.teacher_configs()
    # the same configs as the recipe's seeds 0, 1, 2: their saved runs can be the teachers
    assert teachers == [TrainConfig.default_for("harstream", seed=s) for s in (0, 1, 2)]
    other = replace(TrainConfig.default_for("harstream", seed=2), teachers=2)
    assert [t.seed for t in other.teacher_configs()] == [2000, 2001]
    assert all(t.teachers == 0 for t in other.teacher_configs())
