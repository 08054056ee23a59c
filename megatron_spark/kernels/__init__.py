"""Loss kernels that never materialise the [tokens x vocab] logits."""
