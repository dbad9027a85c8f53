"""The misc family: GrokAdamW and the accelerator / unpublished AdamW variants (records.py; optimizers.py)."""
