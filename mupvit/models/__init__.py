"""The model family: ViT modules (`vit`), variants and shape rules (`shapes`, torch-free), the SP/µP
parametrization (`parametrization`, torch-free), the constructor the loop uses (`build.build_model`) and
mappings onto foreign checkpoint layouts (`adapters`).

This package file stays empty so that reading shapes or the parametrization (the config's checks, the
dashboards) does not import torch.
"""
