"""The by-name distributed evidence tables (fsdp2_runs.py, zero_runs.py); the records themselves live in families/."""
