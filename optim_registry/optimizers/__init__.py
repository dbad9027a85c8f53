"""Optimizer implementations that ship with optim_registry."""
