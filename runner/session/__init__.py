"""The database session: the connection string, connecting and waiting, the advisory lock."""
