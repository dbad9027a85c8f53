"""How stepping meets an engine: layer-wise stepping inside backward (layerwise/), FSDP2 (fsdp2.py), DeepSpeed ZeRO
(zero.py), and why each distributed path is trusted (evidence.py).
"""
