"""migration-runner: applies PostgreSQL migration files once, in order, under an advisory lock."""

__version__ = "0.1.0"
