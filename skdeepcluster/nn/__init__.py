"""Torch building blocks (no sklearn here): backbones, batched heads, losses, augmentations."""
