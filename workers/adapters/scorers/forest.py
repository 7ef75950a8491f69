"""A vectorised NumPy evaluator for IsolationForest, for small batches.

scikit-learn walks each of the forest's trees in a separate call (about 5 ms for one row
of a 100-tree forest) and the ONNX graph skl2onnx builds for it has hundreds of nodes
(about 1 ms). Walking all trees at once as padded arrays takes a few NumPy operations
per tree level: tens of microseconds for a handful of rows. For large batches the
per-element work dominates and scikit-learn's compiled traversal wins; the loader's
calibration picks per batch size, and a parity check against scikit-learn decides
whether this backend may be used at all.

It reproduces scikit-learn exactly: rows are rounded to float32 as scikit-learn's trees
do, the same per-leaf path lengths are summed, and the same normalisation applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

_LEAF = -1
# Up to this many rows, explaining finds leaves with the padded walk.
_WALK_ROWS = 64
# Above this many (tree, node, feature) cells (64 MB of float64), explaining walks the
# trees instead of reading per-node credits from a table.
_CREDIT_TABLE_LIMIT = 8_000_000


class ForestScorer:
    """Anomaly scores (``-decision_function``) of a fitted IsolationForest."""

    backend = "numpy"
    max_rows = 4096
    """Beyond this, the padded walk's (rows x trees) arrays outgrow the caches: slower
    per row than scikit-learn's compiled per-tree descent (about 45 us vs 6 us a row at
    20,000 rows of a 100-tree forest) and hungry for memory (hundreds of MB at 100,000
    rows). The loader never hands it a larger batch, whatever calibration measured."""

    ARRAYS = ("left", "right", "feature", "threshold", "leaf_depth", "log_samples")
    """What a forest is, as arrays: saved once per host and memory-mapped by every pool
    process (``host_cache.py``), so a load costs no unpickling and no copy."""

    def __init__(self, estimator: Any) -> None:
        trees = [tree.tree_ for tree in estimator.estimators_]
        width = max(tree.node_count for tree in trees)
        shape = (len(trees), width)
        # Node ids, feature ids: int16 holds them (a tree of 2^15 nodes would need 2^14
        # samples per tree; IsolationForest's default is 256), at a quarter of int64.
        index = np.int16 if width < 2**15 and estimator.n_features_in_ < 2**15 else np.int64
        self.left = np.full(shape, _LEAF, dtype=index)
        self.right = np.full(shape, _LEAF, dtype=index)
        self.feature = np.zeros(shape, dtype=index)
        self.threshold = np.zeros(shape, dtype=np.float64)
        self.leaf_depth = np.zeros(shape, dtype=np.float64)
        self.log_samples = np.zeros(shape, dtype=np.float64)  # log2 of each node's size
        subsample = estimator._max_features != estimator.n_features_in_
        for t, (tree, features) in enumerate(
            zip(trees, estimator.estimators_features_, strict=True)
        ):
            n = tree.node_count
            self.left[t, :n] = tree.children_left
            self.right[t, :n] = tree.children_right
            # Trees of a feature-subsampling forest index their subset: map back.
            mapped = np.asarray(features)[np.maximum(tree.feature, 0)]
            self.feature[t, :n] = mapped if subsample else np.maximum(tree.feature, 0)
            self.threshold[t, :n] = tree.threshold
            self.log_samples[t, :n] = np.log2(np.maximum(tree.n_node_samples, 1))
            self.leaf_depth[t, :n] = (
                estimator._decision_path_lengths[t]
                + estimator._average_path_length_per_tree[t]
                - 1.0
            )
        self.depth = int(max(tree.max_depth for tree in trees))
        self.denominator = len(trees) * _average_path_length(estimator._max_samples)
        self.offset = float(estimator.offset_)
        self.n_features = int(estimator.n_features_in_)
        self._tree_index = np.arange(len(trees))
        self._credit_table: npt.NDArray[np.float64] | None = None
        self._trees: list[tuple[Any, npt.NDArray[np.int64] | None]] | None = [
            (tree, np.asarray(features) if subsample else None)
            for tree, features in zip(trees, estimator.estimators_features_, strict=True)
        ]

    def to_arrays(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        """The arrays and scalars :meth:`from_arrays` rebuilds this scorer from."""
        arrays = {name: getattr(self, name) for name in self.ARRAYS}
        meta = {
            "depth": self.depth,
            "denominator": self.denominator,
            "offset": self.offset,
            "n_features": self.n_features,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], meta: dict[str, Any]) -> ForestScorer:
        """A scorer over saved arrays (memory-mapped, read-only): it scores and explains
        as the original did, without the scikit-learn trees."""
        scorer = cls.__new__(cls)
        for name in cls.ARRAYS:
            setattr(scorer, name, arrays[name])
        scorer.depth = int(meta["depth"])
        scorer.denominator = float(meta["denominator"])
        scorer.offset = float(meta["offset"])
        scorer.n_features = int(meta["n_features"])
        scorer._tree_index = np.arange(arrays["left"].shape[0])
        scorer._credit_table = None
        scorer._trees = None
        return scorer

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (mapped or owned), and of the credit table once built."""
        table = self._credit_table.nbytes if self._credit_table is not None else 0
        return sum(int(getattr(self, name).nbytes) for name in self.ARRAYS) + table

    @classmethod
    def supports(cls, estimator: Any) -> bool:
        """True for a fitted scikit-learn IsolationForest."""
        return type(estimator).__name__ == "IsolationForest" and hasattr(estimator, "offset_")

    def score(self, matrix: Matrix) -> Scores:
        rows = np.asarray(matrix, dtype=np.float32).astype(np.float64)
        leaves = self._leaves(rows)
        depths = self.leaf_depth[self._tree_index, leaves].sum(axis=1)
        scores: npt.NDArray[np.float64] = 2.0 ** (-depths / self.denominator)
        return scores + self.offset

    def isolation_bits(self, matrix: Matrix) -> npt.NDArray[np.float64]:
        """Per row and feature: the bits of isolation the record's path owes to splits on
        that feature, averaged over the trees. A split moving the record from a node of
        n samples to a child of m credits log2(n / m) to its feature, so a row's credits
        add up exactly to the mean over trees of log2(root size / leaf size). (Counting
        splits alone would not do: in expectation an outlier in one feature meets as
        many random splits on the others before the one that isolates it.)

        A node's credits depend only on the path to it, so they are summed once per node
        (:meth:`_node_credits`); a row then costs a descent to its leaves and one gather.
        Forests too wide for that table walk and credit as they go."""
        if self._credit_table is None and len(matrix) <= _WALK_ROWS:
            # a handful of flagged rows: walking costs less than building the table, and
            # a worker serving many models keeps no table per model it ever explained
            return self._isolation_bits_walking(
                np.asarray(matrix, dtype=np.float32).astype(np.float64)
            )
        table = self._node_credits()
        if table is None:
            return self._isolation_bits_walking(
                np.asarray(matrix, dtype=np.float32).astype(np.float64)
            )
        if self._trees is None or len(matrix) <= _WALK_ROWS:
            # the padded walk finds a handful of rows' leaves fastest (and is all a
            # forest loaded from its saved arrays has)
            rows = np.asarray(matrix, dtype=np.float32).astype(np.float64)
            # in blocks, so the (rows, trees, features) gather stays small
            return np.concatenate(
                [
                    table[self._tree_index, self._leaves(block)].mean(axis=1)
                    for block in np.split(rows, range(_WALK_ROWS, len(rows), _WALK_ROWS))
                ]
            ).reshape(len(rows), self.n_features)
        # scikit-learn's compiled per-tree descent finds the leaves of a few thousand
        # rows about 6x faster than the padded NumPy walk (which wins on a handful).
        exact = np.ascontiguousarray(matrix, dtype=np.float32)
        credits = np.zeros((len(exact), self.n_features), dtype=np.float64)
        for t, (tree, features) in enumerate(self._trees):
            columns = exact if features is None else np.ascontiguousarray(exact[:, features])
            credits += table[t, tree.apply(columns)]
        credits /= len(self._trees)
        return credits

    def _leaves(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Each row's leaf in each tree: ``(rows, trees)``."""
        nodes = np.zeros((len(rows), len(self._tree_index)), dtype=np.int64)
        row_index = np.arange(len(rows))[:, None]
        for _ in range(self.depth):
            left = self.left[self._tree_index, nodes]
            leaf = left == _LEAF
            if leaf.all():
                break
            values = rows[row_index, self.feature[self._tree_index, nodes]]
            go_left = values <= self.threshold[self._tree_index, nodes]
            step = np.where(go_left, left, self.right[self._tree_index, nodes])
            nodes = np.where(leaf, nodes, step)
        return nodes

    def _node_credits(self) -> npt.NDArray[np.float64] | None:
        """``(trees, nodes, features)``: the credits a path to each node has collected,
        built on first use (a 100-tree forest of 256-sample trees and 20 features is about
        8 MB), or None when the table would exceed :data:`_CREDIT_TABLE_LIMIT` cells."""
        if self._credit_table is not None:
            return self._credit_table
        n_trees, width = self.left.shape
        if n_trees * width * self.n_features > _CREDIT_TABLE_LIMIT:
            return None
        table = np.zeros((n_trees, width, self.n_features), dtype=np.float64)
        # scikit-learn numbers a node after its parent, so one pass in index order sees
        # every parent's credits complete before its children copy them.
        parent = np.full((n_trees, width), -1, dtype=np.int64)
        for side in (self.left, self.right):
            trees, nodes = np.nonzero(side != _LEAF)
            parent[trees, side[trees, nodes]] = nodes
        for node in range(1, width):
            trees = np.flatnonzero(parent[:, node] >= 0)
            if trees.size == 0:
                continue
            above = parent[trees, node]
            table[trees, node] = table[trees, above]
            table[trees, node, self.feature[trees, above]] += (
                self.log_samples[trees, above] - self.log_samples[trees, node]
            )
        self._credit_table = table
        return table

    def _isolation_bits_walking(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n_rows, n_trees = len(rows), len(self._tree_index)
        credits = np.zeros((n_rows, self.n_features), dtype=np.float64)
        nodes = np.zeros((n_rows, n_trees), dtype=np.int64)
        row_index = np.broadcast_to(np.arange(n_rows)[:, None], nodes.shape)
        for _ in range(self.depth):
            left = self.left[self._tree_index, nodes]
            inner = left != _LEAF
            if not inner.any():
                break
            features = self.feature[self._tree_index, nodes]
            values = rows[row_index, features]
            go_left = values <= self.threshold[self._tree_index, nodes]
            step = np.where(go_left, left, self.right[self._tree_index, nodes])
            child = np.where(inner, step, nodes)
            gained = (
                self.log_samples[self._tree_index, nodes]
                - self.log_samples[self._tree_index, child]
            )
            # bincount on (row, feature) cells: np.add.at does the same an order slower
            cells = row_index[inner] * self.n_features + features[inner]
            credits += np.bincount(cells, weights=gained[inner], minlength=credits.size).reshape(
                credits.shape
            )
            nodes = child
        return credits / n_trees


def _average_path_length(n_samples: int) -> float:
    """scikit-learn's c(n): the average path length of an unsuccessful BST search."""
    if n_samples <= 1:
        return 0.0
    if n_samples == 2:
        return 1.0
    harmonic = np.log(n_samples - 1.0) + np.euler_gamma
    return float(2.0 * harmonic - 2.0 * (n_samples - 1.0) / n_samples)
