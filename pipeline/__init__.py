"""Thin CLI stages (``python -m pipeline.<stage>``) over ``components``; each reads ``params.yaml``."""
