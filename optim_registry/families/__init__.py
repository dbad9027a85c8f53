"""Builders and protocol shims for optimizer families the generic build path cannot handle alone."""
