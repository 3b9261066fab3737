"""Losses and voxel-tuple samplers (no networks, no data)."""
