"""The flashoptim family: FlashOptim's quantised optimizers (records.py; builders.py)."""
