"""infini-jax: Infini-attention transformers in JAX/Flax."""
