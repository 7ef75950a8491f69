"""Store adapters: the SQL store (PostgreSQL or SQLite) and the in-memory fake."""
