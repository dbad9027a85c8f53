"""Layer-wise stepping: each parameter stepped inside backward (engine.py, pure torch; ddp.py: under DDP)."""
