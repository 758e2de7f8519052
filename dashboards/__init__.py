"""The MLflow UI launcher and the comparison report (tables, figures, one self-contained HTML page)."""
