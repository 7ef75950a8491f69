"""The one thing pyproject.toml cannot declare as stable configuration: the C extension.

The IsolationForest walk (workers/adapters/scorers/_forest_walk.c) is plain C on the
CPython API, no NumPy headers. It is optional: where no C compiler is found the install
goes on, and forest.py walks with NumPy and scikit-learn instead (slower, same scores).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pynomaly_workers.adapters.scorers._forest_walk",
            sources=["workers/adapters/scorers/_forest_walk.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
