"""big_vision plain ViT baselines in pure PyTorch: config, model, optimiser, data, training loop."""
