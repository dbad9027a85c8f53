"""Layer-wise stepping, each parameter stepped inside backward: engine.py (the optimizer, pure torch), ddp.py (under
DDP), factory.py (built for a ``_layerwise`` name from the plan), trainer.py (the Trainer's side), twins.py (the
``_layerwise`` records, data only).
"""
