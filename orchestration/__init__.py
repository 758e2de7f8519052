"""Ray Train jobs and Ray Tune sweeps around the mupvit trainer, with MLflow tracking (see the open issues)."""
