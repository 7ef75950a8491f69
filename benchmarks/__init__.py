"""The benchmark suite: the project and its baselines, measured side by side in one run.

``python -m benchmarks --json`` (``make bench``) runs every measurement against the local
Redis + PostgreSQL with real worker processes and prints one JSON object as the last line
of stdout; ``--quick`` (``make bench-quick``) keeps the run under two minutes. Progress and
a human summary go to stderr. Timings on a shared 2-core machine are noisy, so every ratio
compares figures measured in the same run.
"""
