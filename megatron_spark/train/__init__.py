"""Training: advantages, packing, the loss head, optimisation."""
