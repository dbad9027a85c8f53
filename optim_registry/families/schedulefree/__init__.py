"""The schedulefree family: schedule-free AdamW, RAdam and SGD (records.py; builders.py)."""
