"""Fleet mode (SPEC §11): one folder, many databases, in one process.

Above `runner.commands`: each target runs the single-database commands with its own
Settings, so every guarantee of those commands holds per target without code here.
"""
