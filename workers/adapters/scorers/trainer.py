"""The :class:`~pynomaly_workers.domain.ports.Trainer` on scikit-learn and skl2onnx."""

from __future__ import annotations

from typing import Any

from pynomaly_workers.adapters.scorers import onnx, sklearn
from pynomaly_workers.domain.ports import ExportedModel, FittedModel
from pynomaly_workers.domain.records import Matrix


class SklearnTrainer:
    """Fits scikit-learn estimators; exports them to ONNX where skl2onnx can."""

    def fit(
        self, algorithm: str, matrix: Matrix, *, contamination: float, params: dict[str, Any]
    ) -> FittedModel:
        estimator = sklearn.build_estimator(algorithm, contamination=contamination, params=params)
        sklearn.fit(estimator, matrix)
        return FittedModel(
            estimator=estimator,
            artifact=sklearn.dump(estimator),
            training_scores=sklearn.training_scores(estimator, matrix),
            params=_json_params(estimator, params),
            scorer=sklearn.SklearnScorer(estimator),
        )

    def export(self, fitted: FittedModel, *, n_features: int) -> ExportedModel | None:
        content = onnx.export(fitted.estimator, n_features=n_features)
        if content is None:
            return None
        return ExportedModel(content=content, scorer=onnx.OnnxScorer(content))


def _json_params(estimator: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The estimator's effective parameters that JSON can hold, the caller's on top."""
    params = estimator.get_params()
    kept = {k: v for k, v in params.items() if isinstance(v, int | float | str | bool | None)}
    return {**kept, **overrides}
