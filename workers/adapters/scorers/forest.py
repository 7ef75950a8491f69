"""The project's own IsolationForest scorer: a C walk for every batch size, with a
vectorised NumPy walk where the C module is not built.

scikit-learn walks each of the forest's trees in a separate call (about 5 ms for one row
of a 100-tree forest), branching on every split, and the ONNX graph skl2onnx builds for
it has hundreds of nodes (about 1 ms). The C walk (``_forest_walk.c``) lays each tree out
as a complete binary tree of its depth, so a row's walk is ``depth`` steps with no branch
on the data, and walks eight rows side by side: about 2 us for one row and 0.5 s for a
million rows of 16 features (scikit-learn: 4 s), on the same scores bit for bit.

Without it (a build with no C compiler), the NumPy walk walks all trees at once as
padded arrays: tens of microseconds for a handful of rows, but for large batches the
per-element work dominates and scikit-learn's compiled traversal wins; the loader's
calibration picks per batch size. Either way, a parity check against scikit-learn
decides whether this backend may be used at all.

It reproduces scikit-learn exactly: rows are rounded to float32 as scikit-learn's trees
do, the same per-leaf path lengths are summed in the same order, and the same
normalisation applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

try:
    from pynomaly_workers.adapters.scorers import _forest_walk
except ImportError:  # built without a C compiler: the NumPy walk serves
    _forest_walk = None  # type: ignore[assignment]

_LEAF = -1
# Up to this many rows, explaining finds leaves with the padded walk.
_WALK_ROWS = 64
# Above this many (tree, node, feature) cells (64 MB of float64), explaining walks the
# trees instead of reading per-node credits from a table.
_CREDIT_TABLE_LIMIT = 8_000_000
WALK_MAX_DEPTH = 12
"""The C walk's layout holds 2**depth - 1 inner nodes and 2**depth leaves a tree (57 KB
at depth 12; IsolationForest's default 256 samples a tree give depth 8, 3.6 KB); a
deeper forest is walked by NumPy and scikit-learn."""


def compiled() -> bool:
    """Whether the C walk is built into this install."""
    return _forest_walk is not None


class ForestScorer:
    """Anomaly scores (``-decision_function``) of a fitted IsolationForest."""

    backend = "forest"
    PADDED_MAX_ROWS = 4096
    """Beyond this, the NumPy walk's (rows x trees) arrays outgrow the caches: slower
    per row than scikit-learn's compiled per-tree descent (about 45 us vs 6 us a row at
    20,000 rows of a 100-tree forest) and hungry for memory (hundreds of MB at 100,000
    rows). Without the C walk the loader never hands it a larger batch
    (:attr:`max_rows`), whatever calibration measured."""

    ARRAYS = ("left", "right", "feature", "threshold", "leaf_depth", "log_samples")
    """What a forest is, as arrays: saved once per host and memory-mapped by every pool
    process (``host_cache.py``), so a load costs no unpickling and no copy."""
    WALK_ARRAYS = ("walk_feature", "walk_threshold", "walk_leaf", "walk_node")
    """The C walk's layout of the same trees (:func:`walk_layout`), saved and mapped
    beside them; derived from them where a host cache folder predates it."""

    def __init__(self, estimator: Any, *, walk: bool = True) -> None:
        """``walk=False`` leaves the C walk out (the NumPy walk scores)."""
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
        self._leaf_table: npt.NDArray[np.float64] | None = None
        self._trees: list[tuple[Any, npt.NDArray[np.int64] | None]] | None = [
            (tree, np.asarray(features) if subsample else None)
            for tree, features in zip(trees, estimator.estimators_features_, strict=True)
        ]
        self._walk = self._walk_layout() if walk else None

    def _walk_layout(self) -> Walk | None:
        """The C walk's arrays for this forest, or None when it cannot walk it."""
        if _forest_walk is None or self.depth > WALK_MAX_DEPTH or self.depth < 1:
            return None
        return walk_layout(self.left, self.right, self.feature, self.threshold, self.leaf_depth)

    @property
    def max_rows(self) -> int | None:
        """The largest batch the loader may hand this scorer: any, with the C walk."""
        return None if self._walk is not None else self.PADDED_MAX_ROWS

    def to_arrays(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        """The arrays and scalars :meth:`from_arrays` rebuilds this scorer from."""
        arrays = {name: getattr(self, name) for name in self.ARRAYS}
        if self._walk is not None:
            arrays.update(zip(self.WALK_ARRAYS, self._walk, strict=True))
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
        scorer._leaf_table = None
        scorer._trees = None
        scorer._walk = None
        if all(name in arrays for name in cls.WALK_ARRAYS) and _forest_walk is not None:
            walk = tuple(arrays[name] for name in cls.WALK_ARRAYS)
            scorer._walk = _checked_walk(
                walk, n_features=scorer.n_features, width=scorer.left.shape[1]
            )
        if scorer._walk is None:  # saved before the C walk, or not as walk_layout writes
            scorer._walk = scorer._walk_layout()
        return scorer

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (mapped or owned), and of the credit table once built."""
        table = sum(t.nbytes for t in (self._credit_table, self._leaf_table) if t is not None)
        walk = sum(int(array.nbytes) for array in self._walk) if self._walk is not None else 0
        return sum(int(getattr(self, name).nbytes) for name in self.ARRAYS) + table + walk

    @classmethod
    def supports(cls, estimator: Any) -> bool:
        """True for a fitted scikit-learn IsolationForest."""
        return type(estimator).__name__ == "IsolationForest" and hasattr(estimator, "offset_")

    def score(self, matrix: Matrix) -> Scores:
        if self._walk is not None:
            depths = self._walked_sums(matrix, self._walk[2], width=1)[:, 0]
        else:
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
        Forests too wide for that table walk and credit as they go.

        With the C walk, the table is kept per leaf position of its layout and the C
        code sums each row's leaves' credits."""
        walk_table = self._walk is not None and (
            self._leaf_table is not None or len(matrix) > _WALK_ROWS
        )
        if walk_table and (leaf_table := self._leaf_credits()) is not None:
            return self._walked_bits(matrix, leaf_table)
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

    def _leaf_credits(self) -> npt.NDArray[np.float64] | None:
        """``(trees, leaf positions, features)``: the node credit table read at each leaf
        position of the C walk's layout, built on first use (it replaces the node table:
        1.6 MB for a 100-tree forest of depth 8 at 8 features), or None when too big."""
        if self._leaf_table is not None:
            return self._leaf_table
        assert self._walk is not None
        node = self._walk[3]
        if node.size * self.n_features > _CREDIT_TABLE_LIMIT:
            return None
        table = self._node_credits()
        if table is None:
            return None
        self._leaf_table = np.ascontiguousarray(table[self._tree_index[:, None], node])
        self._credit_table = None  # the walk reads only the leaf table from now on
        return self._leaf_table

    def _walked_bits(
        self, matrix: Matrix, table: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        credits = self._walked_sums(matrix, table, width=self.n_features)
        credits /= len(table)
        return credits

    def _walked_sums(
        self, matrix: Matrix, table: npt.NDArray[np.float64], *, width: int
    ) -> npt.NDArray[np.float64]:
        """``(rows, width)``: each row's sum over trees of its leaf's ``width`` values in
        ``table`` (trees x leaf positions [x width]), by the C walk."""
        assert self._walk is not None
        assert _forest_walk is not None
        exact = np.ascontiguousarray(matrix, dtype=np.float32)
        if exact.ndim != 2 or exact.shape[1] != self.n_features:
            raise ValueError(
                f"rows of shape {exact.shape} for a forest of {self.n_features} features"
            )
        feature, threshold, _, _ = self._walk
        sums = np.zeros((len(exact), width), dtype=np.float64)
        _forest_walk.leaf_sums(
            exact,
            feature,
            threshold,
            table,
            sums,
            len(exact),
            self.n_features,
            len(feature),
            table.shape[1].bit_length() - 1,  # 2**depth leaf positions a tree
            width,
        )
        return sums

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


Walk = tuple[
    npt.NDArray[np.int16], npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.int16]
]
"""The C walk's layout: split features, thresholds, leaf values, and the padded node
each leaf position stands for (which explanations read the credit table at)."""


def walk_layout(
    left: npt.NDArray[Any],
    right: npt.NDArray[Any],
    feature: npt.NDArray[Any],
    threshold: npt.NDArray[np.float64],
    leaf_depth: npt.NDArray[np.float64],
) -> Walk:
    """The padded trees as complete binary trees of the forest's depth, for the C walk:
    per tree, the split feature and threshold of inner node k (children 2k+1, 2k+2,
    level by level), and the leaf value (``leaf_depth``) and padded node at each of the
    2**depth positions of the last level. A leaf above the last level fills every position
    below it, so any path through it ends on its value.

    Thresholds are float32, rounded towards minus infinity: for a float32 row value x,
    ``x <= t32`` holds exactly when ``x <= t`` does in double (scikit-learn's test)."""
    n_trees = left.shape[0]
    trees = np.arange(n_trees)[:, None]
    nodes = np.zeros((n_trees, 1), dtype=np.int64)  # padded node at each position of a level
    features: list[npt.NDArray[Any]] = []
    thresholds: list[npt.NDArray[np.float64]] = []
    depth = 0
    while True:
        children_left = left[trees, nodes].astype(np.int64)
        inner = children_left != _LEAF
        if not inner.any():
            break
        features.append(np.where(inner, feature[trees, nodes], 0))
        thresholds.append(np.where(inner, threshold[trees, nodes], 0.0))
        children_right = right[trees, nodes].astype(np.int64)
        nodes = np.stack(
            [np.where(inner, children_left, nodes), np.where(inner, children_right, nodes)],
            axis=2,
        ).reshape(n_trees, -1)
        depth += 1
    exact = np.concatenate(thresholds, axis=1) if thresholds else np.zeros((n_trees, 0))
    rounded = exact.astype(np.float32)
    above = rounded.astype(np.float64) > exact
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    split = np.concatenate(features, axis=1) if features else np.zeros((n_trees, 0))
    return (
        np.ascontiguousarray(split, dtype=np.int16),
        np.ascontiguousarray(rounded),
        np.ascontiguousarray(leaf_depth[trees, nodes], dtype=np.float64),
        np.ascontiguousarray(nodes, dtype=np.int16),
    )


def _checked_walk(
    walk: tuple[npt.NDArray[Any], ...], *, n_features: int, width: int
) -> Walk | None:
    """Mapped walk arrays, if they have the layout :func:`walk_layout` writes; the C
    walk reads rows at these feature ids, so they are checked against the row width,
    and the padded node ids against the padded arrays' width."""
    feature, threshold, leaf, node = walk
    leaves = leaf.shape[-1] if leaf.ndim == 2 else 0
    inner = leaves - 1
    ok = (
        leaves >= 2
        and (leaves & inner) == 0  # a power of two
        and leaves <= 1 << WALK_MAX_DEPTH
        and feature.dtype == np.int16
        and threshold.dtype == np.float32
        and leaf.dtype == np.float64
        and feature.ndim == 2
        and feature.shape[1] == inner
        and threshold.shape == feature.shape
        and leaf.shape == (feature.shape[0], inner + 1)
        and (feature.size == 0 or (int(feature.min()) >= 0 and int(feature.max()) < n_features))
        and node.dtype == np.int16
        and node.shape == leaf.shape
        and int(node.min()) >= 0
        and int(node.max()) < width
    )
    return (feature, threshold, leaf, node) if ok else None


def _average_path_length(n_samples: int) -> float:
    """scikit-learn's c(n): the average path length of an unsuccessful BST search."""
    if n_samples <= 1:
        return 0.0
    if n_samples == 2:
        return 1.0
    harmonic = np.log(n_samples - 1.0) + np.euler_gamma
    return float(2.0 * harmonic - 2.0 * (n_samples - 1.0) / n_samples)
