"""The histories: the bookkeeping tables of the native and the sqlx format."""
