"""The paper's comparison models: classical classifiers on hand-made features, and a plain LSTM.

The classical models (KNN, XGBoost, Random Forest, SVM, Extra Trees) see a feature vector per
window in the spirit of UCI HAR's 561 (time- and frequency-domain statistics per channel, the
magnitude and axis correlations of each sensor, and the direction of gravity), computed from
the same raw windows the neural models get. They are fitted on the training subjects only
and scored on the test subjects with :func:`shared.classification.classification_report`,
so their figures sit next to the neural models' on equal terms.

This module imports without TensorFlow: Keras is imported only inside the LSTM builder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from shared.activities import ACTIVITIES, NUM_CLASSES
from shared.classification import ClassificationReport, classification_report
from shared.dataset import WindowSet
from shared.dsp.config import CHANNELS

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

#: Sample rate of the windows (Hz) and samples per window.
SAMPLE_RATE_HZ = 50.0
WINDOW_SIZE = 128
#: Frequency bands (Hz) whose spectral energy is a feature; the last one includes Nyquist.
BANDS_HZ: tuple[tuple[float, float], ...] = ((0, 1), (1, 3), (3, 6), (6, 12), (12, 25))
#: The three 3-axis sensors, as (name, first channel index) into ``CHANNELS``.
TRIADS: tuple[tuple[str, int], ...] = (("body_acc", 0), ("body_gyro", 3), ("total_acc", 6))
_AXES = ("x", "y", "z")
_AXIS_PAIRS = ((0, 1), (0, 2), (1, 2))
#: Below this variance a signal counts as constant (std 1e-6 g or rad/s: under any sensor's
#: noise floor); ratios that divide by it become 0 instead of inf/NaN.
_TINY_VARIANCE = 1e-12

_CHANNEL_STATS: tuple[str, ...] = (
    "mean", "std", "min", "max", "median", "iqr", "mad", "energy", "skewness", "kurtosis",
    "dominant_freq_hz",
    *(f"band_energy_{lo:g}_{hi:g}hz" for lo, hi in BANDS_HZ),
)  # fmt: skip


def _feature_names() -> tuple[str, ...]:
    names = [f"{channel}_{stat}" for stat in _CHANNEL_STATS for channel in CHANNELS]
    for triad, _ in TRIADS:
        names += [f"{triad}_mag_mean", f"{triad}_mag_std"]
        names += [f"{triad}_corr_{_AXES[a]}{_AXES[b]}" for a, b in _AXIS_PAIRS]
    names += [f"gravity_dir_{axis}" for axis in _AXES]
    names += [f"gravity_angle_{axis}" for axis in _AXES]
    return tuple(names)


#: Name of every column of :func:`window_features`, in order.
FEATURE_NAMES: tuple[str, ...] = _feature_names()
NUM_FEATURES = len(FEATURE_NAMES)


def _safe_divide(
    num: npt.NDArray[np.float64], den: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """``num / den`` where ``ok``, 0 elsewhere (no warnings, no NaN)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=ok)


def _band_masks(n: int, rate_hz: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    freqs = np.fft.rfftfreq(n, d=1.0 / rate_hz).astype(np.float64)
    masks = np.stack(
        [
            (freqs >= lo) & ((freqs < hi) if i < len(BANDS_HZ) - 1 else (freqs <= hi))
            for i, (lo, hi) in enumerate(BANDS_HZ)
        ],
        axis=1,
    )
    return freqs, masks


def window_features(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Hand-made features of windows ``x`` (n, 128, 9) → (n, ``NUM_FEATURES``) float32.

    Columns are named by :data:`FEATURE_NAMES`:

    * per channel (``CHANNELS`` order within each statistic): mean, standard deviation, min,
      max, median, interquartile range, mean absolute deviation from the mean, energy (mean
      of squares), skewness, excess kurtosis, dominant frequency (Hz, strongest non-DC bin
      of the spectrum; 0 for a constant channel), and the spectral energy of the de-meaned
      channel in each of :data:`BANDS_HZ` (one-sided power, scaled so the bands sum to the
      channel's variance);
    * per sensor (body acc, body gyro, total acc): mean and std of the magnitude, and the
      Pearson correlation of each pair of axes (0 when an axis is constant);
    * gravity: direction of the mean of ``total_acc - body_acc`` (unit vector; 0 if there is
      none) and its angle (radians) to each device axis.

    Vectorised over windows; constant windows give finite values.
    """
    w = np.asarray(x, dtype=np.float64)
    if w.ndim != 3 or w.shape[2] != len(CHANNELS):
        raise ValueError(f"expected windows (n, samples, {len(CHANNELS)}), got {w.shape}")
    n_samples = w.shape[1]

    # --- time domain, per channel: (n, 9) each
    mean = w.mean(axis=1)
    centred = w - mean[:, None, :]
    var = (centred**2).mean(axis=1)
    std = np.sqrt(var)
    varying = var > _TINY_VARIANCE
    q25, median, q75 = np.percentile(w, [25.0, 50.0, 75.0], axis=1)
    mad = np.abs(centred).mean(axis=1)
    energy = (w**2).mean(axis=1)
    skewness = _safe_divide((centred**3).mean(axis=1), var**1.5, varying)
    kurtosis = np.where(varying, _safe_divide((centred**4).mean(axis=1), var**2, varying) - 3, 0)

    # --- frequency domain, per channel, of the de-meaned signal
    spectrum = np.fft.rfft(centred, axis=1)  # (n, bins, 9)
    power = np.abs(spectrum) ** 2 / n_samples**2
    power[:, 1 : (n_samples + 1) // 2, :] *= 2  # one-sided: all but DC (and Nyquist if even)
    freqs, masks = _band_masks(n_samples, SAMPLE_RATE_HZ)
    dominant = np.where(varying, freqs[1 + np.argmax(power[:, 1:, :], axis=1)], 0.0)
    bands = np.einsum("nbc,bk->nkc", power, masks.astype(np.float64))  # (n, bands, 9)

    per_channel = [
        mean, std, w.min(axis=1), w.max(axis=1), median, q75 - q25, mad, energy, skewness,
        kurtosis, dominant, *np.moveaxis(bands, 1, 0),
    ]  # fmt: skip

    # --- per sensor: magnitude and axis correlations
    per_sensor: list[npt.NDArray[np.float64]] = []
    for _, first in TRIADS:
        axes = slice(first, first + 3)
        magnitude = np.linalg.norm(w[:, :, axes], axis=2)
        per_sensor += [magnitude.mean(axis=1), magnitude.std(axis=1)]
        for a, b in _AXIS_PAIRS:
            i, j = first + a, first + b
            cov = (centred[:, :, i] * centred[:, :, j]).mean(axis=1)
            ok = varying[:, i] & varying[:, j]
            corr = _safe_divide(cov, std[:, i] * std[:, j], ok)
            per_sensor.append(np.clip(corr, -1.0, 1.0))

    # --- gravity direction: what total acceleration has that body acceleration has not
    gravity = mean[:, 6:9] - mean[:, 0:3]
    norm = np.linalg.norm(gravity, axis=1, keepdims=True)
    direction = _safe_divide(gravity, norm, norm > 1e-9)
    angles = np.arccos(np.clip(direction, -1.0, 1.0))

    channel_block = np.stack(per_channel, axis=1)  # (n, statistics, 9)
    features = np.concatenate(
        [channel_block.reshape(len(w), channel_block.shape[1] * channel_block.shape[2]),
         np.stack(per_sensor, axis=1), direction, angles],
        axis=1,
    )  # fmt: skip
    return features.astype(np.float32)


# --------------------------------------------------------------------------- classical models


class Classifier(Protocol):
    """What the baselines need of an estimator (scikit-learn's interface)."""

    def fit(self, x: Any, y: Any, /) -> Any: ...

    def predict(self, x: Any, /) -> Any: ...


#: Builds an unfitted estimator from a seed (ignored by models without randomness).
BaselineFactory = Callable[[int], Classifier]


def _knn(seed: int) -> Classifier:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    del seed  # no randomness
    model: Classifier = make_pipeline(
        StandardScaler(), KNeighborsClassifier(n_neighbors=5, n_jobs=2)
    )
    return model


def _svm(seed: int) -> Classifier:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    del seed  # no randomness without probability=True
    model: Classifier = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=10.0, gamma="scale"))
    return model


def _xgboost(seed: int) -> Classifier:
    from xgboost import XGBClassifier

    model: Classifier = XGBClassifier(
        n_estimators=300,
        learning_rate=0.1,
        max_depth=6,
        tree_method="hist",
        n_jobs=2,
        random_state=seed,
    )
    return model


def _random_forest(seed: int) -> Classifier:
    from sklearn.ensemble import RandomForestClassifier

    model: Classifier = RandomForestClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    return model


def _extra_trees(seed: int) -> Classifier:
    from sklearn.ensemble import ExtraTreesClassifier

    model: Classifier = ExtraTreesClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    return model


#: The paper's classical comparison models by name, each a factory ``seed -> estimator``.
CLASSICAL_BASELINES: Mapping[str, BaselineFactory] = MappingProxyType(
    {
        "KNN": _knn,
        "XGBoost": _xgboost,
        "Random Forest": _random_forest,
        "SVM": _svm,
        "Extra Trees": _extra_trees,
    }
)
#: Models without randomness: fitted once, whatever the seeds (their result has seed None).
DETERMINISTIC_BASELINES: frozenset[str] = frozenset({"KNN", "SVM"})


@dataclass(frozen=True)
class BaselineResult:
    """Test-split scores of one baseline fit (fractions in [0, 1]; macro averages).

    ``seed`` is None for a model without randomness (see :data:`DETERMINISTIC_BASELINES`).
    """

    name: str
    seed: int | None
    accuracy: float
    precision: float
    recall: float
    f1: float
    fit_seconds: float

    @classmethod
    def from_report(
        cls, name: str, seed: int | None, report: ClassificationReport, fit_seconds: float
    ) -> BaselineResult:
        return cls(
            name=name,
            seed=seed,
            accuracy=report.accuracy,
            precision=report.macro.precision,
            recall=report.macro.recall,
            f1=report.macro.f1,
            fit_seconds=fit_seconds,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_classical_baselines(
    sets: Mapping[str, WindowSet],
    seeds: Sequence[int],
    names: Sequence[str] | None = None,
) -> list[BaselineResult]:
    """Fit each classical model on the train split's features, score it on the test split.

    Seeded models are fitted once per seed; :data:`DETERMINISTIC_BASELINES` once in all.
    ``names`` picks models from :data:`CLASSICAL_BASELINES` (default: all, in its order).
    The validation split is not used: these models have no checkpoint to choose.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    chosen = list(CLASSICAL_BASELINES) if names is None else list(names)
    if unknown := [n for n in chosen if n not in CLASSICAL_BASELINES]:
        raise ValueError(f"unknown baselines {unknown}; known: {list(CLASSICAL_BASELINES)}")
    train, test = sets["train"], sets["test"]
    started = time.perf_counter()
    x_train, x_test = window_features(train.x), window_features(test.x)
    logger.info(
        "features: %d train and %d test windows × %d in %.1f s",
        len(train), len(test), NUM_FEATURES, time.perf_counter() - started,
    )  # fmt: skip

    results: list[BaselineResult] = []
    for name in chosen:
        model_seeds: Sequence[int | None] = (
            [None] if name in DETERMINISTIC_BASELINES else list(seeds)
        )
        for seed in model_seeds:
            model = CLASSICAL_BASELINES[name](0 if seed is None else seed)
            started = time.perf_counter()
            model.fit(x_train, train.y)
            fit_seconds = time.perf_counter() - started
            predicted = np.asarray(model.predict(x_test)).astype(np.int64).ravel()
            report = classification_report(test.y, predicted, ACTIVITIES)
            result = BaselineResult.from_report(name, seed, report, fit_seconds)
            logger.info(
                "%s (seed %s): accuracy %.4f, macro F1 %.4f, fit %.1f s",
                name, seed, result.accuracy, result.f1, fit_seconds,
            )  # fmt: skip
            results.append(result)
    return results


# --------------------------------------------------------------------------- LSTM


def build_lstm_baseline(
    channel_mean: np.ndarray | None = None, channel_std: np.ndarray | None = None
) -> keras.Model:
    """The paper's plain LSTM: LSTM(100) → Dropout(0.5) → Dense(100, relu) → Dense(6).

    Trained like the other neural models (``harstream train``'s recipes,
    :class:`services.training.train.TrainConfig` kind ``lstm``); ``channel_mean`` and
    ``channel_std`` (9,): standardise the input first (``TrainConfig.standardise``)."""
    import keras
    from keras import layers

    from services.training.models import standardised

    window = keras.Input(shape=(WINDOW_SIZE, len(CHANNELS)), name="window")
    x = layers.LSTM(100)(standardised(window, channel_mean, channel_std))
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(100, activation="relu")(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(window, probs, name="lstm_baseline")
