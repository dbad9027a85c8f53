"""The torchao family: 4-bit, 8-bit and FP8 AdamW state (records.py; builders.py: the post-construction hooks)."""
