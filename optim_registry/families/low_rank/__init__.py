"""The low_rank family: GaLore, APOLLO and Q-GaLore (records.py; optimizers.py: checkpointable subclasses, builder)."""
