"""The built-in schedules: their records (records.py, data only) and the functions of the extra names (functions.py)."""
