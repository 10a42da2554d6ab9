from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from shared.classification import classification_report, confusion_matrix

LABELS = ("a", "b", "c")


def test_hand_worked_example() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    report = classification_report(y_true, y_pred, LABELS)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.per_class["b"].precision == pytest.approx(2 / 3)
    assert report.per_class["b"].recall == 1.0
    assert report.per_class["c"].f1 == pytest.approx(2 * 1 * 0.5 / 1.5)
    np.testing.assert_array_equal(report.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=80))
def test_agrees_with_scikit_learn(pairs: list[tuple[int, int]]) -> None:
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    report = classification_report(y_true, y_pred, LABELS)
    assert report.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    for average, ours in (("macro", report.macro), ("weighted", report.weighted)):
        p, r, _, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=[0, 1, 2], average=average, zero_division=0
        )
        assert (ours.precision, ours.recall) == pytest.approx((p, r))
        if average == "macro":
            assert ours.f1 == pytest.approx(
                f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
            )


def test_out_of_range_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0, 3], [0, 1], 3)
