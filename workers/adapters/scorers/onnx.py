"""ONNX export (our own for IsolationForest, skl2onnx for the rest) and scoring (ONNX Runtime).

skl2onnx converts an IsolationForest into tens of ONNX nodes per tree and then spends
seconds simplifying that graph; a 100-tree forest takes 6-8 s to export and the session
0.15 s to build. :func:`isolation_forest_model` instead writes one ``TreeEnsembleRegressor``
whose leaves carry their share of scikit-learn's normalised path length, between a Cast
and four element-wise nodes: tens of milliseconds to export and to load.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# Opsets every onnxruntime release since 1.15 runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Rows per session call. Some graphs grow with the batch (LOF's holds an n x n_train
# distance matrix), so large batches are scored in slices to keep memory bounded.
MAX_ROWS_PER_CALL = 1_024


def export(estimator: Any, *, n_features: int) -> bytes | None:
    """The estimator as ONNX bytes whose ``scores`` output is its decision_function, or
    None where skl2onnx has no converter for it."""
    if ForestScorer.supports(estimator):
        return bytes(isolation_forest_model(estimator, n_features=n_features).SerializeToString())
    from skl2onnx import to_onnx

    sample = np.zeros((1, n_features), dtype=np.float32)
    try:
        model = to_onnx(estimator, sample, target_opset=TARGET_OPSET)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        log.info("no ONNX export for %s: %s", type(estimator).__name__, str(exc)[:200])
        return None
    except Exception as exc:  # ONNX is optional: a converter's own bug must not fail training
        log.warning(
            "ONNX export of %s failed (%s: %s); the version is served without it",
            type(estimator).__name__,
            type(exc).__name__,
            str(exc)[:200],
        )
        return None
    return bytes(model.SerializeToString())


def isolation_forest_model(estimator: Any, *, n_features: int) -> onnx.ModelProto:
    """A fitted IsolationForest's decision_function as an ONNX graph: input ``X`` (float32,
    ``n_features`` columns), output ``scores`` (float64, one column).

    The trees sum ``r = sum(path length) / (n_trees * c(max_samples))`` and the graph
    returns ``-2**-r - offset_``, as scikit-learn computes. Rows are float32, as scikit-learn
    rounds them, then widened to float64 so the trees compare them with scikit-learn's
    float64 thresholds and sum float64 leaf values; ONNX Runtime runs double thresholds
    only for a double input. The tree operator's output is float32 by the ONNX spec, so
    ``r`` carries one float32 rounding: at most 2**-24 / e (2.2e-8) of the score.
    """
    from onnx import TensorProto, helper, numpy_helper

    forest = ForestScorer(estimator)
    constants = [
        numpy_helper.from_array(np.array(2.0), "two"),
        numpy_helper.from_array(np.array(-forest.offset), "minus_offset"),
    ]
    nodes = [
        helper.make_node("Cast", ["X"], ["rows"], to=TensorProto.DOUBLE),
        _tree_ensemble(forest, estimator, inputs=["rows"], outputs=["ratio"]),
        helper.make_node("Cast", ["ratio"], ["ratio64"], to=TensorProto.DOUBLE),
        helper.make_node("Neg", ["ratio64"], ["exponent"]),
        helper.make_node("Pow", ["two", "exponent"], ["normal_score"]),
        helper.make_node("Sub", ["minus_offset", "normal_score"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "isolation_forest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("scores", TensorProto.DOUBLE, [None, 1])],
        initializer=constants,
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in TARGET_OPSET.items()]
    # onnx stamps its own (newest) IR version; older runtimes refuse a newer one.
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
    )


def _tree_ensemble(
    forest: ForestScorer, estimator: Any, *, inputs: list[str], outputs: list[str]
) -> onnx.NodeProto:
    """One ``ai.onnx.ml`` TreeEnsembleRegressor over every tree of ``forest``."""
    from onnx import helper, numpy_helper

    tree_ids, node_ids = _real_nodes(forest, estimator)
    left, right = forest.left[tree_ids, node_ids], forest.right[tree_ids, node_ids]
    leaf = left < 0
    # scikit-learn sends a NaN where training taught each node to (not always right).
    missing_left = np.concatenate([tree.tree_.missing_go_to_left for tree in estimator.estimators_])
    weights, base = _leaf_weights(forest, tree_ids[leaf], node_ids[leaf])
    return helper.make_node(
        "TreeEnsembleRegressor",
        inputs,
        outputs,
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[base],
        nodes_treeids=tree_ids.tolist(),
        nodes_nodeids=node_ids.tolist(),
        nodes_modes=[b"LEAF" if is_leaf else b"BRANCH_LEQ" for is_leaf in leaf.tolist()],
        nodes_featureids=np.where(leaf, 0, forest.feature[tree_ids, node_ids]).tolist(),
        nodes_values_as_tensor=numpy_helper.from_array(
            np.where(leaf, 0.0, forest.threshold[tree_ids, node_ids]), "thresholds"
        ),
        nodes_truenodeids=np.where(leaf, 0, left).tolist(),
        nodes_falsenodeids=np.where(leaf, 0, right).tolist(),
        nodes_missing_value_tracks_true=np.where(leaf, 0, missing_left).tolist(),
        target_treeids=tree_ids[leaf].tolist(),
        target_nodeids=node_ids[leaf].tolist(),
        target_ids=[0] * int(leaf.sum()),
        target_weights_as_tensor=numpy_helper.from_array(weights, "leaf_weights"),
    )


def _real_nodes(
    forest: ForestScorer, estimator: Any
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(tree, node) of every node, tree by tree: the forest's padding left out."""
    counts = np.array([tree.tree_.node_count for tree in estimator.estimators_])
    tree_ids, node_ids = np.nonzero(np.arange(forest.left.shape[1]) < counts[:, None])
    return tree_ids, node_ids


def _leaf_weights(
    forest: ForestScorer, tree_ids: npt.NDArray[np.intp], node_ids: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.float64], float]:
    """Each leaf's share of the normalised path length, and the trees' base value.

    A forest of one-sample trees has a zero denominator: scikit-learn then scores every
    row as if the ratio were 1."""
    if forest.denominator == 0:
        return np.zeros(len(tree_ids)), 1.0
    return forest.leaf_depth[tree_ids, node_ids] / forest.denominator, 0.0


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
