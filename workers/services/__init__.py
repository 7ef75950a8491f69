"""Service layer: the use cases tasks and the CLI call. Plain functions over ports."""
