"""Public models: trained on public data only, at no privacy cost.

artefact.py   the public-model directory (public.json + models/): load, save, check;
              the public classifier's logits
pretrain.py   `vpntk pretrain`: an extractor (and a generator) trained on public data
overlap.py    the check that no public training image is also a private one
diffusion_model.py  `vpntk pretrain-diffusion`: a public diffusion model (diffusion.json +
              models/) for the token methods
"""

from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.public.artefact import (FORMAT, MODELS, PUBLIC_JSON, RELATIVE_STD_FLOOR,
                                       PublicModels, check_compatible, classifier_logits,
                                       feature_scale, load_public, open_public_dir,
                                       require_generator, save_public)
from vpntk_jax.public.overlap import check_overlap
from vpntk_jax.public.pretrain import feature_statistics, load_public_data, pretrain

__all__ = ["FORMAT", "MODELS", "PUBLIC_JSON", "RELATIVE_STD_FLOOR", "PretrainConfig",
           "PublicModels", "check_compatible", "check_overlap", "classifier_logits",
           "feature_scale", "feature_statistics", "load_public", "load_public_data",
           "open_public_dir", "pretrain", "require_generator", "save_public"]
