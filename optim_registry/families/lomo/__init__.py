"""The lomo family: LOMO and AdaLomo, updated inside backward (records.py; optimizers.py: subclasses, builder)."""
