"""MLflow UI launcher and the comparison report (see the open issues)."""
