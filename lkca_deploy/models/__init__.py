"""LKCA models: the mixer and its views (lkca.py), the ViT backbone (vit.py), task heads, and the zoo."""
