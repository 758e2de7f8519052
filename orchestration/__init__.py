"""Ray Train jobs, Ray Tune sweeps and the ablation campaign around the mupvit trainer, with MLflow tracking; a
local Ray head for the demo and the tests."""
