"""jnas: differentiable NAS in the DARTS space, and honest evaluation of it, in JAX/Flax."""

__version__ = "0.1.0"
