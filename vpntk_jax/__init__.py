"""vpntk_jax: differentially private image synthesis with NTK mean embeddings.

Pipeline: data -> features -> private release -> generator training ->
synthesis -> evaluation. Methods (DP-NTK, ...) are small recipes over these parts.
"""

__version__ = "0.1.0"
