"""Drafting rollback files from a forward file's parse tree."""
