"""The torch family: PyTorch's own optimizers and transformers' Adafactor (records.py: the records; builders.py)."""
