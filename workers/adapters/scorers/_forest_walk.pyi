import numpy as np
from numpy.typing import NDArray

def leaf_sums(
    rows: NDArray[np.float32],
    feature: NDArray[np.int16],
    threshold: NDArray[np.float32],
    table: NDArray[np.float64],
    out: NDArray[np.float64],
    n_rows: int,
    n_features: int,
    n_trees: int,
    depth: int,
    width: int,
    /,
) -> None: ...
