"""An example optim_registry plugin distribution (see docs/plugins.md)."""
