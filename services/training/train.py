"""Training: deterministic seeds, early stopping on the validation subjects, saved history.

Checkpoints are chosen on the validation subjects (training subjects held out); the test
subjects are never looked at here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from services.training.models import ModelKind
from shared.dataset import WindowSet
from shared.dsp import PreprocessingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the ones the committed models were trained with.

    The paper states none of optimiser, batch or epochs: for ``paper`` we use Adam (1e-3),
    batch 64, at most 50 epochs, early stopping on validation loss (patience 10).
    """

    kind: ModelKind
    seed: int = 0
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 10
    #: Step between training windows (samples); 64 = UCI's. Smaller: overlapping windows
    #: as augmentation. Validation and test always use the stream's step.
    train_step: int = 64
    #: harstream model only: random rotation (degrees) / scaling during training.
    max_degrees: float = 10.0
    width: int = 64
    #: harstream model only: AdamW weight decay, and validation/checkpoints on an exponential
    #: moving average of the weights (steadier across seeds than the raw weights).
    weight_decay: float = 0.0
    ema: bool = False

    @classmethod
    def default_for(cls, kind: ModelKind, seed: int = 0) -> TrainConfig:
        if kind == "paper":
            return cls(kind="paper", seed=seed)
        return cls(
            kind="harstream",
            seed=seed,
            epochs=60,
            patience=12,
            train_step=32,
            weight_decay=0.01,
            ema=True,
        )


@dataclass
class TrainResult:
    model: object  # keras.Model; typed loosely so this module imports without TensorFlow
    config: TrainConfig
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float
    train_windows: int
    validation_windows: int
    extra: dict[str, object] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """model.keras, history.json and run.json in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / "model.keras")  # type: ignore[attr-defined]
        (directory / "history.json").write_text(json.dumps(self.history, indent=1))
        (directory / "run.json").write_text(json.dumps(self.summary(), indent=1))

    def summary(self) -> dict[str, object]:
        return {
            "config": asdict(self.config),
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history.get("loss", [])),
            "train_seconds": round(self.seconds, 1),
            "train_windows": self.train_windows,
            "validation_windows": self.validation_windows,
            **self.extra,
        }


def seed_everything(seed: int) -> None:
    """Same seed, same weights and same batches: Python, numpy and TensorFlow, with
    TensorFlow's deterministic kernels."""
    import keras
    import tensorflow as tf

    os.environ["PYTHONHASHSEED"] = str(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(config: TrainConfig, train: WindowSet) -> object:
    from services.training.models import (
        WindowStatistics,
        build_harstream_model,
        build_paper_model,
    )

    if config.kind == "paper":
        return build_paper_model()
    flat = train.x.reshape(-1, train.x.shape[-1])
    model = build_harstream_model(
        flat.mean(axis=0), flat.std(axis=0), width=config.width, max_degrees=config.max_degrees
    )
    statistics = np.asarray(WindowStatistics()(train.x))
    model.get_layer("stats_norm").adapt(statistics)
    return model


def train_model(
    config: TrainConfig, train: WindowSet, validation: WindowSet, verbose: int = 1
) -> TrainResult:
    """Fit ``config.kind`` on ``train``; keep the weights of the best validation loss.

    ``verbose=1`` shows Keras' progress bar per epoch.
    """
    import keras

    seed_everything(config.seed)
    model = build_model(config, train)
    assert isinstance(model, keras.Model)
    if config.weight_decay or config.ema:
        optimizer: keras.optimizers.Optimizer = keras.optimizers.AdamW(
            config.learning_rate,
            weight_decay=config.weight_decay,
            use_ema=config.ema,
            ema_momentum=0.99,
        )
    else:
        optimizer = keras.optimizers.Adam(config.learning_rate)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
    ]
    if config.ema:
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if config.kind == "harstream":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=4)
        )
    logger.info(
        "training %s (seed %d) on %d windows, validating on %d",
        config.kind,
        config.seed,
        len(train),
        len(validation),
    )
    started = time.perf_counter()
    fitted = model.fit(
        train.x,
        train.y,
        validation_data=(validation.x, validation.y),
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=callbacks,
        shuffle=True,
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    return TrainResult(
        model=model,
        config=config,
        history=history,
        best_epoch=best_epoch,
        seconds=seconds,
        train_windows=len(train),
        validation_windows=len(validation),
        extra={"preprocessing": PreprocessingConfig().to_dict()},
    )
