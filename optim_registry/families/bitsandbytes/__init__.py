"""The bitsandbytes family: 8-bit, paged and 32-bit AdamW, AdEMAMix, Lion, RMSprop (records.py; builders.py: builders
and hooks).
"""
