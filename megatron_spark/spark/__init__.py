"""SPARK: recycle policy rollouts into judge and reflection items for the same model."""
