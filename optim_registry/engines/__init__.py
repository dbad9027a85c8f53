"""How stepping meets an engine: layer-wise stepping inside backward, FSDP2 (fsdp2.py) and DeepSpeed ZeRO (zero.py)."""
