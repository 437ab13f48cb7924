"""The conv lowering rules, one module each; lowering/registry.py lists them."""
