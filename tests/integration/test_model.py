"""Models, training, export for TF Serving, and the committed model's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.dsp import PreprocessingConfig
from tests.conftest import REPO_ROOT

COMMITTED_MODEL = REPO_ROOT / "models" / "har"


def test_paper_model_is_the_papers_architecture() -> None:
    from services.training.models import build_paper_model

    model = build_paper_model()
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Reshape",
        "TimeDistributed",
        "TimeDistributed",
        "TimeDistributed",
        "LSTM",
        "GRU",
        "Dense",
    ]
    assert model.layers[2].layer.filters == 64 and model.layers[2].layer.kernel_size == (3,)
    assert model.layers[5].units == 128 and model.layers[5].activation.__name__ == "relu"
    assert model.output_shape == (None, 6)
    assert model.count_params() == 596_998


def test_standardised_paper_model_only_adds_a_normalisation_in_front() -> None:
    from services.training.baselines import build_lstm_baseline
    from services.training.models import build_paper_model

    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=9), rng.uniform(0.1, 2.0, size=9)
    plain, standardised = build_paper_model(), build_paper_model(mean, std)
    names = [layer.__class__.__name__ for layer in standardised.layers]
    assert names[1] == "Normalization"
    assert names[:1] + names[2:] == [layer.__class__.__name__ for layer in plain.layers]
    # the normalisation's statistics are constants, not weights: the same parameters
    assert standardised.count_params() == plain.count_params() == 596_998
    x = (rng.normal(size=(3, 128, 9)) * std + mean).astype(np.float32)
    inner = standardised.get_layer("normalise")
    np.testing.assert_allclose(np.asarray(inner(x)), (x - mean) / std, rtol=1e-4, atol=1e-4)
    lstm = build_lstm_baseline(mean, std)
    assert lstm.layers[1].__class__.__name__ == "Normalization"
    assert lstm.output_shape == (None, 6)


def test_augmentation_is_identity_at_inference() -> None:
    from services.training.models import RandomOrientation

    x = np.random.default_rng(0).normal(size=(4, 128, 9)).astype(np.float32)
    layer = RandomOrientation(max_degrees=10)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    rotated = np.asarray(layer(x, training=True))
    assert not np.allclose(rotated, x)
    # a rotation (times a scale) keeps every sensor vector's length up to that scale
    ratio = np.linalg.norm(rotated[:, :, 0:3], axis=-1) / np.linalg.norm(x[:, :, 0:3], axis=-1)
    assert np.allclose(ratio, ratio[:, :1], rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_export(window_sets, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One epoch on a slice of the data, exported twice: enough to test the mechanics."""
    from dataclasses import replace

    from services.training.export import export_saved_model
    from services.training.train import TrainConfig, train_model

    rng = np.random.default_rng(0)
    train = window_sets["train"].where(rng.random(len(window_sets["train"])) < 0.1)
    config = replace(TrainConfig.default_for("harstream"), epochs=1)
    result = train_model(config, train, window_sets["validation"], verbose=0)
    base = tmp_path_factory.mktemp("models") / "har"
    first = export_saved_model(result.model, base, {"name": "t"}, PreprocessingConfig())
    second = export_saved_model(result.model, base, {"name": "t"}, PreprocessingConfig())
    return result, base, first, second


def test_export_writes_numbered_versions_with_a_model_card(tiny_export) -> None:  # type: ignore[no-untyped-def]
    _, base, first, second = tiny_export
    assert (first.name, second.name) == ("1", "2")
    assert not list(base.glob(".*partial"))
    card = json.loads((second / "model_card.json").read_text())
    assert card["preprocessing"]["fingerprint"] == PreprocessingConfig().fingerprint
    assert card["signature"]["inputs"]["window"]["shape"] == [-1, 128, 9]
    assert "Fingerprint" in (second / "MODEL_CARD.md").read_text()


def test_saved_model_signature_matches_keras(tiny_export, window_sets) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    result, _, first, _ = tiny_export
    loaded = tf.saved_model.load(str(first))
    signature = loaded.signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"window"}
    assert set(signature.structured_outputs) == {"probabilities", "preprocessing_fingerprint"}
    x = window_sets["test"].x[:300]
    out = signature(window=tf.constant(x))
    np.testing.assert_allclose(
        out["probabilities"].numpy(), result.model.predict(x, verbose=0), atol=1e-5
    )
    assert out["preprocessing_fingerprint"].shape == (300,)
    assert out["preprocessing_fingerprint"].numpy()[0].decode() == PreprocessingConfig().fingerprint


def test_committed_model_reproduces_its_model_card(window_sets) -> None:  # type: ignore[no-untyped-def]
    from services.training.evaluate import (
        SavedModelPredictor,
        evaluate_windows,
        resolve_version_dir,
    )
    from services.training.export import read_model_card

    version_dir = resolve_version_dir(COMMITTED_MODEL)
    card = read_model_card(version_dir)
    predictor = SavedModelPredictor(version_dir)
    assert predictor.fingerprint() == PreprocessingConfig().fingerprint
    test = window_sets["test"]
    report = evaluate_windows(predictor.predict_proba(test.x), test.y)
    assert report.accuracy == pytest.approx(card["metrics"]["test"]["accuracy"], abs=1e-9)
    assert report.accuracy >= 0.96
    assert report.macro.f1 >= 0.96


def test_every_committed_version_reproduces_its_model_card(window_sets) -> None:  # type: ignore[no-untyped-def]
    """Older versions stay servable (canary, shadow, rollback): each one's test figures are
    still those of its card, through the serving signature, on today's preprocessing."""
    from services.training.evaluate import SavedModelPredictor, evaluate_windows
    from services.training.export import read_model_card

    versions = sorted(
        (p for p in COMMITTED_MODEL.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    assert versions, COMMITTED_MODEL
    test = window_sets["test"]
    for version_dir in versions:
        card = read_model_card(version_dir)
        predictor = SavedModelPredictor(version_dir)
        assert predictor.fingerprint() == PreprocessingConfig().fingerprint, version_dir
        report = evaluate_windows(predictor.predict_proba(test.x), test.y)
        expected = card["metrics"]["test"]["accuracy"]
        assert report.accuracy == pytest.approx(expected, abs=1e-9), version_dir
        if card.get("name") == "har-paper":
            assert report.accuracy >= 0.918  # the paper's reported figure


def test_evaluate_command_prints_json_and_writes_pngs(hapt_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from services.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "--data-dir",
            str(hapt_cache.directory),
            "evaluate",
            "--model",
            str(COMMITTED_MODEL),
            "--split",
            "test",
            "--json",
            "--reports-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["windows"] == 2874
    assert len(summary["confusion_matrix"]) == 6
    assert {"precision", "recall", "f1"} <= set(summary["per_class"]["SITTING"])
    assert all(Path(p).stat().st_size > 10_000 for p in summary["reports"])
    assert len(summary["reports"]) == 2  # confusion matrix + training curves
