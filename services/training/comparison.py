"""The paper's comparison table (its section 3.2), re-run on our windows.

Every model is fitted on the training subjects and scored on UCI HAR's test subjects. The
deep models run over several seeds (mean ± sample std); the paper's own figures stand in a
column beside ours. Runs already in ``runs_dir`` (same kind, seed and configuration) are
reused rather than retrained.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from services.training.pipeline import scores, test_row, train_run
from services.training.train import TrainConfig
from shared.data.cache import HaptCache
from shared.dataset import WindowSet, build_window_sets

logger = logging.getLogger(__name__)

#: The paper's reported figures (%): accuracy, and precision / recall / F1 where given.
PAPER_FIGURES: dict[str, tuple[float, float | None, float | None, float | None]] = {
    "KNN": (85.0, None, None, None),
    "XGBoost": (86.0, None, None, None),
    "Random Forest": (86.3, None, None, None),
    "SVM": (80.0, None, None, None),
    "LSTM": (87.0, None, None, None),
    "Extra Trees": (87.13, None, None, None),
    "CNN-LSTM-GRU (paper)": (91.8, 91.7, 90.25, 90.47),
    "harstream CNN (v1, ours)": (None, None, None, None),  # type: ignore[dict-item]
    "harstream hybrid (ours)": (None, None, None, None),  # type: ignore[dict-item]
}
#: The neural rows: table name → model kind, each trained over every seed.
DEEP_ROWS: dict[str, str] = {
    "LSTM": "lstm",
    "CNN-LSTM-GRU (paper)": "paper",
    "harstream CNN (v1, ours)": "cnn",
    "harstream hybrid (ours)": "harstream",
}

Row = dict[str, float | int | str]


def _saved_row(kind: str, seed: int, runs_dir: Path, test: WindowSet) -> Row | None:
    """The row of a saved run of today's recipe for ``kind`` and ``seed``, if there is one."""
    run_file = runs_dir / f"{kind}-seed{seed}" / "run.json"
    wanted = asdict(TrainConfig.default_for(kind, seed))  # type: ignore[arg-type]
    if not run_file.is_file():
        return None
    saved = json.loads(run_file.read_text())
    if saved.get("config") != wanted:
        return None
    logger.info("reusing %s", run_file)
    if "test_report" not in saved:
        saved["test_report"] = _score_saved_run(run_file.parent, saved, test)
        run_file.write_text(json.dumps(saved, indent=1))
    return dict(saved["test_report"])


def _deep_row(cache: HaptCache, kind: str, seed: int, runs_dir: Path, test: WindowSet) -> Row:
    saved = _saved_row(kind, seed, runs_dir, test)
    if saved is not None:
        return saved
    run_file = runs_dir / f"{kind}-seed{seed}" / "run.json"
    result, sets = train_run(cache, kind, seed, verbose=2)
    figures = scores(result, sets)
    row: Row = test_row(
        seed,
        result.seconds,
        result.best_epoch,
        figures["test"],
        figures["validation"]["accuracy"],
    )
    result.extra["test_report"] = row
    result.save(run_file.parent)
    return row


def _score_saved_run(run_dir: Path, saved: dict, test: WindowSet) -> Row:
    import keras

    import services.training.models  # noqa: F401  (registers the custom layers)
    from services.training.evaluate import evaluate_windows

    model = keras.saving.load_model(run_dir / "model.keras")
    report = evaluate_windows(model.predict(test.x, batch_size=256, verbose=0), test.y)
    config = saved["config"]
    validation = saved.get("metrics", {}).get("validation", {}).get("accuracy")
    return test_row(
        config["seed"], saved["train_seconds"], saved["best_epoch"], report.to_dict(), validation
    )


def _fmt(values: Sequence[float]) -> str:
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def _paper(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def run_comparison(
    cache: HaptCache, seeds: Sequence[int], runs_dir: Path, saved_only: bool = False
) -> str:
    """The table. ``saved_only``: neural rows from the runs already in ``runs_dir`` (today's
    recipes) instead of training the missing ones; rows and seeds without a run are left
    out and named under the table (the classical models are re-run either way)."""
    from services.training.baselines import run_classical_baselines

    started = time.perf_counter()
    sets = dict(build_window_sets(cache.load()))
    rows: dict[str, list[Row]] = {}
    for result in run_classical_baselines(sets, seeds):
        rows.setdefault(result.name, []).append(_baseline_row(result))
    missing: list[str] = []
    for name, kind in DEEP_ROWS.items():
        if not saved_only:
            rows[name] = [_deep_row(cache, kind, seed, runs_dir, sets["test"]) for seed in seeds]
            continue
        found = {seed: _saved_row(kind, seed, runs_dir, sets["test"]) for seed in seeds}
        rows[name] = [row for row in found.values() if row is not None]
        missing += [f"{name} seed {seed}" for seed, row in found.items() if row is None]
    table = render_table(rows, sets, seeds, time.perf_counter() - started)
    if saved_only:
        table = table.replace("` in ", " --saved-only` in ") + (
            "\nRendered with `--saved-only`: neural rows from the saved runs of today's "
            "recipes (fit times as those runs measured them); no saved run, so no row: "
            + (", ".join(missing) or "none")
            + ".\n"
        )
    return table


def _per_seed_table(rows: dict[str, list[Row]], seeds: Sequence[int]) -> list[str]:
    lines = [
        "",
        "Neural models per seed (validation accuracy is what a committed model is chosen on):",
        "",
        "| Model | seed | validation acc. | test acc. | test macro-F1 | kept epoch "
        "| fit time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in DEEP_ROWS:
        for row in rows.get(name, []):
            validation = row.get("validation_accuracy")
            lines.append(
                f"| {name} | {row['seed']} | "
                + ("–" if validation is None else f"{100 * float(validation):.2f}")
                + f" | {100 * float(row['accuracy']):.2f} | {100 * float(row['f1']):.2f} | "
                f"{row.get('best_epoch', '–')} | {float(row['seconds']):.0f} |"
            )
    return lines


def _recipes(seeds: Sequence[int]) -> list[str]:
    from services.training.export import describe_recipe
    from services.training.pipeline import describe_architecture

    lines = []
    for name, kind in DEEP_ROWS.items():
        config = asdict(TrainConfig.default_for(kind, seeds[0]))  # type: ignore[arg-type]
        recipe = describe_recipe(config).replace(
            f"seed {seeds[0]} ", f"seeds {', '.join(map(str, seeds))} "
        )
        lines.append(f"- **{name}** (`{kind}`): {describe_architecture(config)}. {recipe}")
    return lines


def _baseline_row(result: object) -> Row:
    r = asdict(result)  # type: ignore[call-overload]
    return {
        "seed": r["seed"],
        "accuracy": r["accuracy"],
        "precision": r["precision"],
        "recall": r["recall"],
        "f1": r["f1"],
        "seconds": round(r["fit_seconds"], 1),
    }


def render_table(
    rows: dict[str, list[Row]], sets: dict, seeds: Sequence[int], seconds: float
) -> str:
    lines = [
        "# Comparison with the paper (UCI HAR subject split, test subjects 2, 4, 9, 10, 12, "
        "13, 18, 20, 24)",
        "",
        f"Our windows: {len(sets['train'])} train, {len(sets['validation'])} validation, "
        f"{len(sets['test'])} test (the paper used UCI HAR's 7,352 / 2,947). All figures in %; "
        "ours are macro averages over the six classes on the test subjects. Deep models: "
        f"mean ± std over seeds {', '.join(map(str, seeds))}; deterministic models run once.",
        "",
        "| Model | Paper acc. | Paper P / R / F1 | Our acc. | Our macro-P | Our macro-R "
        "| Our macro-F1 | runs | fit time (s/run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (acc, p, r, f1) in PAPER_FIGURES.items():
        ours = rows.get(name, [])
        if not ours:
            continue
        prf = "–" if p is None else f"{_paper(p)} / {_paper(r)} / {_paper(f1)}"
        lines.append(
            f"| {name} | {_paper(acc)} | {prf} | "
            + " | ".join(
                _fmt([float(o[k]) for o in ours]) for k in ("accuracy", "precision", "recall", "f1")
            )
            + f" | {len(ours)} | {statistics.mean(float(o['seconds']) for o in ours):.0f} |"
        )
    lines += _per_seed_table(rows, seeds)
    lines += [
        "",
        "Classical models (KNN, XGBoost, Random Forest, SVM, Extra Trees) use hand-made window "
        "features (`services/training/baselines.py`); LSTM, CNN-LSTM-GRU and harstream read the "
        "raw 9-channel windows. The paper gives no features, hyper-parameters or seeds for its "
        "baselines, so rows other than ours are reconstructions, not reproductions.",
        "",
        "Recipes of the neural models (`harstream train --model <kind>`; checkpoints chosen on "
        "the validation subjects 5, 14, 22, 28, never on test subjects):",
        "",
        *_recipes(seeds),
        "",
        f"Produced by `harstream compare --seeds {','.join(map(str, seeds))}` in "
        f"{seconds / 60:.0f} min on {platform.machine()} ({platform.processor() or 'CPU'}).",
        "",
    ]
    return "\n".join(lines)
