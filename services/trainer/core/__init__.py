"""Settings, typed errors and the SQLite store of the trainer service."""
