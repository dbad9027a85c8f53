"""The optimi family: torch-optimi's optimizers (records.py; builders.py)."""
