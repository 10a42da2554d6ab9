"""The demo's rollout: which versions it serves, the config and env it hands the model
server and inference worker, and live accuracy and agreement per model version."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from services.demo.loadgen import LoadStats
from services.demo.run import (
    DemoResult,
    DemoRollout,
    choose_rollout,
    demo_model_config,
    rollout_env,
    shipped_labels,
    summary_table,
    write_demo_model_config,
)
from services.demo.tally import DemoTally
from services.inference.settings import InferenceSettings
from services.modelserver.config import VersionPolicy, parse_config
from services.modelserver.settings import ModelServerSettings
from shared.activities import ACTIVITIES
from shared.features import motion_features
from shared.messages import Prediction


def test_versions_follow_the_shipped_labels_or_the_flags() -> None:
    assert shipped_labels()["stable"] >= 1  # deploy/tfserving/models.config parses
    shipped = {"stable": 2, "canary": 3}
    assert choose_rollout({1, 2, 3}, shipped) == DemoRollout(2, 3, shadow=True)
    assert choose_rollout({1}, shipped) == DemoRollout(1)  # the shipped versions are absent
    assert choose_rollout({1, 4}, {"stable": 1, "canary": 1}) == DemoRollout(1)
    chosen = choose_rollout({1, 2}, {}, stable=1, candidate=2, shadow=False, canary_share=0.25)
    assert chosen == DemoRollout(1, 2, shadow=False, canary_share=0.25)
    assert chosen.describe() == "stable v1, candidate v2 (canary 25% of devices)"
    with pytest.raises(ValueError, match="not in the model directory"):
        choose_rollout({1}, {}, candidate=5)
    with pytest.raises(ValueError, match="needs a candidate"):
        choose_rollout({1}, {}, shadow=True)
    with pytest.raises(ValueError, match="no model version"):
        choose_rollout(set(), {})


def test_config_and_env_are_what_the_services_accept(tmp_path: Path) -> None:
    rollout = DemoRollout(2, 3, shadow=True, canary_share=0.1)
    path = write_demo_model_config(tmp_path, tmp_path / "har", rollout)
    (config,) = parse_config(path.read_text())
    assert config == demo_model_config(tmp_path / "har", rollout)
    assert config.policy == VersionPolicy.specific([2, 3])
    assert config.labels == {"stable": 2, "canary": 3}
    env = rollout_env(path, rollout)
    server = ModelServerSettings(
        **{
            k.removeprefix("HARSTREAM_MODELSERVER_").lower(): v
            for k, v in env["modelserver"].items()
        }
    )
    assert server.model_config_file == path and server.allow_version_labels_for_unavailable_models
    worker = InferenceSettings(
        **{k.removeprefix("HARSTREAM_INFERENCE_").lower(): v for k, v in env["inference"].items()}
    )
    assert (worker.model_version_label, worker.shadow, worker.canary_share) == ("stable", True, 0.1)
    alone = demo_model_config(tmp_path, DemoRollout(1))
    assert alone.labels == {"stable": 1, "canary": 1} and alone.policy.versions == {1}


def _prediction(device: str, start: int, label: str, version: int, model_label: str) -> Prediction:
    probabilities = tuple(0.9 if a == label else 0.02 for a in ACTIVITIES)
    return Prediction(
        window_id=f"{device}:{start}",
        device_id=device,
        start_index=start,
        start_time=0.0,
        end_time=2.56,
        label=label,
        probabilities=probabilities,
        model_name="har",
        model_version=version,
        features=motion_features(np.zeros((128, 9), np.float32)),
        ingested_at=1.0,
        window_emitted_at=1.1,
        produced_at=1.2,
        queue_wait_s=0.01,
        inference_s=0.005,
        model_label=model_label,
    )


def test_tally_scores_each_version_and_the_shadows_agreement() -> None:
    # HAPT labels are 1-based (1 WALKING ... 6 LAYING): 4 windows of 128 samples.
    walking, sitting = ACTIVITIES.index("WALKING") + 1, ACTIVITIES.index("SITTING") + 1
    truth = {"dev": np.array([walking] * 128 * 2 + [sitting] * 128 * 2)}
    tally = DemoTally(truth)
    starts = [0, 128, 256, 384]
    live = ["WALKING", "WALKING", "SITTING", "STANDING"]  # 3 of 4 right
    shadow = ["WALKING", "LAYING", "SITTING", "SITTING"]  # 3 of 4 right, agrees on 2
    for start, label in zip(starts, shadow, strict=True):
        tally.add_shadow(_prediction("dev", start, label, 3, "canary"))  # before live: fine
    for start, label in zip(starts, live, strict=True):
        tally.add_prediction(_prediction("dev", start, label, 2, "stable"))
    tally.add_shadow(_prediction("dev", 0, "LAYING", 3, "canary"))  # a duplicate: ignored
    tally.add_shadow(_prediction("stranger", 0, "LAYING", 3, "canary"))  # not in the replay

    stable, candidate = tally.live_versions[2], tally.shadow_versions[3]
    assert (stable.label, stable.scored, stable.correct, stable.accuracy) == ("stable", 4, 3, 0.75)
    assert (candidate.label, candidate.scored, candidate.accuracy) == ("canary", 4, 0.75)
    agreement = tally.agreement[(2, 3)]
    assert (agreement.compared, agreement.agreed, agreement.rate) == (4, 2, 0.5)
    assert tally.predictions == 4  # shadows are not live predictions
    report = tally.report()
    assert report is not None and report.accuracy == stable.accuracy

    console = Console(width=200, record=True)
    console.print(summary_table(DemoResult(tally, LoadStats(), 4, 10.0)))
    text = console.export_text()
    assert re.search(r"live accuracy v2 \(stable\)[ │]+75\.00% over 4 labelled windows", text)
    assert re.search(r"shadow accuracy v3 \(canary\)[ │]+75\.00% over 4", text)
    assert re.search(r"agreement shadow v3 / live v2[ │]+50\.00% of 4 windows", text)
    assert replace(stable, correct=0).accuracy == 0.0


def test_local_model_server_env_is_one_thread_per_op() -> None:
    from services.demo.pipeline import LOCAL_MODELSERVER_ENV

    server = ModelServerSettings(
        **{
            k.removeprefix("HARSTREAM_MODELSERVER_").lower(): v
            for k, v in LOCAL_MODELSERVER_ENV.items()
        }
    )
    assert server.tensorflow_intra_op_parallelism == 1
    assert (
        server.tensorflow_inter_op_parallelism == 0
    )  # TensorFlow's choice: calls run side by side
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ModelServerSettings(tensorflow_intra_op_parallelism=-1)
