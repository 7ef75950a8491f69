/* The IsolationForest walk in C: the sum over trees of each row's leaf value.
 *
 * Each tree is laid out as a complete binary tree of its depth (forest.py builds the
 * layout): inner node k has children 2k+1 and 2k+2, so a walk is `depth` steps with no
 * branch on the data, and a leaf shallower than the depth is repeated below itself.
 * scikit-learn's per-tree descent branches on every split, and about half of those
 * branches are mispredicted on random splits; here eight rows walk each tree side by
 * side, eight independent chains of loads the processor overlaps.
 *
 * Exactness: rows are float32 (as scikit-learn's trees see them) and thresholds are
 * float32 rounded towards minus infinity, so `x <= t` is the same test as scikit-learn's
 * `x <= threshold` in double (rows are finite: records.py rejects NaN and infinity).
 * Leaf values are summed in tree order in double, scikit-learn's order: the scores match
 * bit for bit.
 *
 * The caller (forest.py) checks the feature ids against the row width when it builds or
 * maps the layout; this module checks every buffer's size. The GIL is released while
 * walking.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define LANES 8

static void
walk(const float *rows, Py_ssize_t n_rows, Py_ssize_t n_features, const int16_t *feature,
     const float *threshold, const double *leaf, Py_ssize_t n_trees, int depth, double *out)
{
    const Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1;
    const Py_ssize_t leaves = inner + 1;
    Py_ssize_t start = 0;

    for (; start + LANES <= n_rows; start += LANES) {
        double total[LANES] = {0};
        const float *x = rows + start * n_features;
        for (Py_ssize_t t = 0; t < n_trees; t++) {
            const int16_t *f = feature + t * inner;
            const float *th = threshold + t * inner;
            Py_ssize_t node[LANES] = {0};
            for (int level = 0; level < depth; level++) {
                for (int j = 0; j < LANES; j++) {
                    Py_ssize_t k = node[j];
                    node[j] = 2 * k + 1 + (x[j * n_features + f[k]] > th[k]);
                }
            }
            const double *value = leaf + t * leaves - inner;
            for (int j = 0; j < LANES; j++) {
                total[j] += value[node[j]];
            }
        }
        for (int j = 0; j < LANES; j++) {
            out[start + j] = total[j];
        }
    }
    for (Py_ssize_t i = start; i < n_rows; i++) {
        const float *x = rows + i * n_features;
        double total = 0.0;
        for (Py_ssize_t t = 0; t < n_trees; t++) {
            const int16_t *f = feature + t * inner;
            const float *th = threshold + t * inner;
            Py_ssize_t k = 0;
            for (int level = 0; level < depth; level++) {
                k = 2 * k + 1 + (x[f[k]] > th[k]);
            }
            total += leaf[t * leaves + k - inner];
        }
        out[i] = total;
    }
}

/* Into out (n_rows x width, zeroed by the caller): each row's sum over trees of the
 * `width` values its leaf holds in `table` (n_trees x 2**depth x width). Same walk. */
static void
walk_table(const float *rows, Py_ssize_t n_rows, Py_ssize_t n_features, const int16_t *feature,
           const float *threshold, const double *table, Py_ssize_t width, Py_ssize_t n_trees,
           int depth, double *out)
{
    const Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1;
    const Py_ssize_t leaves = inner + 1;

    for (Py_ssize_t i = 0; i < n_rows; i++) {
        const float *x = rows + i * n_features;
        double *sum = out + i * width;
        for (Py_ssize_t t = 0; t < n_trees; t++) {
            const int16_t *f = feature + t * inner;
            const float *th = threshold + t * inner;
            Py_ssize_t k = 0;
            for (int level = 0; level < depth; level++) {
                k = 2 * k + 1 + (x[f[k]] > th[k]);
            }
            const double *value = table + (t * leaves + k - inner) * width;
            for (Py_ssize_t c = 0; c < width; c++) {
                sum[c] += value[c];
            }
        }
    }
}

static int
sized(Py_buffer *buffer, Py_ssize_t items, Py_ssize_t itemsize, const char *what)
{
    if (buffer->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", what, buffer->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(leaf_sums_doc,
"leaf_sums(rows, feature, threshold, table, out, n_rows, n_features, n_trees, depth, width)\n\n"
"Into out (float64, n_rows x width; zeroed by the caller when width > 1): each row's\n"
"sum over trees of its leaf's `width` values in table (float64, n_trees x 2**depth x\n"
"width: the leaf values when scoring, width 1). rows: float32 (n_rows, n_features);\n"
"feature: int16 and threshold: float32 (n_trees, 2**depth - 1). All C-contiguous.");

static PyObject *
leaf_sums(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer rows, feature, threshold, table, out;
    Py_ssize_t n_rows, n_features, n_trees, width;
    int depth;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*y*y*y*w*nnnin", &rows, &feature, &threshold, &table, &out,
                          &n_rows, &n_features, &n_trees, &depth, &width)) {
        return NULL;
    }
    if (depth < 1 || depth > 20 || n_rows < 0 || n_features < 1 || n_trees < 1 || width < 1) {
        PyErr_SetString(PyExc_ValueError, "leaf_sums: shape out of range");
        goto done;
    }
    {
        Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1;
        if (!sized(&rows, n_rows * n_features, 4, "rows") ||
            !sized(&feature, n_trees * inner, 2, "feature") ||
            !sized(&threshold, n_trees * inner, 4, "threshold") ||
            !sized(&table, n_trees * (inner + 1) * width, 8, "table") ||
            !sized(&out, n_rows * width, 8, "out")) {
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    if (width == 1) {  /* scoring: eight rows side by side */
        walk((const float *)rows.buf, n_rows, n_features, (const int16_t *)feature.buf,
             (const float *)threshold.buf, (const double *)table.buf, n_trees, depth,
             (double *)out.buf);
    }
    else {
        walk_table((const float *)rows.buf, n_rows, n_features, (const int16_t *)feature.buf,
                   (const float *)threshold.buf, (const double *)table.buf, width, n_trees,
                   depth, (double *)out.buf);
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&feature);
    PyBuffer_Release(&threshold);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"leaf_sums", leaf_sums, METH_VARARGS, leaf_sums_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_forest_walk", "The IsolationForest walk in C (see forest.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__forest_walk(void)
{
    return PyModule_Create(&module);
}
