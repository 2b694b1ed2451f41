"""Database access: the embedded server, connection pools and migrations."""
