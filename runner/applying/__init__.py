"""Running a migration: applying files, watching them, locating SQL errors."""
