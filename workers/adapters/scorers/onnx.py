"""ONNX export (skl2onnx) and scoring (ONNX Runtime)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

log = logging.getLogger(__name__)

# Opsets every onnxruntime release since 1.15 runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Rows per session call. Some graphs grow with the batch (LOF's holds an n x n_train
# distance matrix), so large batches are scored in slices to keep memory bounded.
MAX_ROWS_PER_CALL = 1_024


def export(estimator: Any, *, n_features: int) -> bytes | None:
    """The estimator as ONNX bytes, or None where skl2onnx has no converter for it."""
    from skl2onnx import to_onnx

    sample = np.zeros((1, n_features), dtype=np.float32)
    try:
        model = to_onnx(estimator, sample, target_opset=TARGET_OPSET)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        log.info("no ONNX export for %s: %s", type(estimator).__name__, str(exc)[:200])
        return None
    return bytes(model.SerializeToString())


class OnnxScorer:
    """Scores with ONNX Runtime; the ``scores`` output is scikit-learn's decision_function."""

    backend = "onnx"
    nbytes = 0
    """Held in memory, as the loader counts it (the ONNX model's size)."""

    def __init__(self, content: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The arena would keep the largest batch's buffers for the life of the process.
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            content, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [output.name for output in self.session.get_outputs()]
        self.output_name = "scores" if "scores" in outputs else outputs[-1]

    def score(self, matrix: Matrix) -> Scores:
        features = np.ascontiguousarray(matrix, dtype=np.float32)
        parts = [
            self.session.run([self.output_name], {self.input_name: piece})[0]
            for piece in np.split(
                features, range(MAX_ROWS_PER_CALL, len(features), MAX_ROWS_PER_CALL)
            )
        ]
        raw = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
        return np.asarray(-raw, dtype=np.float64)
