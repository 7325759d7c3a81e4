"""The stages a run is made of, each a module: the private mechanism(s)
(`mean_embedding`, `semantic_query`, `private_training`), the recipes that
combine them (`diffusion_recipe`, `textual_inversion`), synthesis and evaluation. Methods combine them
(`vpntk_jax.methods`); `vpntk_jax.pipeline` runs them in order."""
