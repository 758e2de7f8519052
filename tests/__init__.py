"""The test suite. Importing this package comes first (before tests/conftest.py and before any import of torch), so
the environment set here reaches torch's OpenMP runtime and every subprocess of the suite."""

import os

# Idle OpenMP threads sleep instead of spinning. The suite runs more busy processes than cores (two xdist workers,
# their Ray workers and loader workers), and spinning threads take the cores from those with work: three copies of
# tests/test_parametrization.py + test_fused_adam.py at once on 2 cores took 123 s spinning, 27 s sleeping (alone:
# 16.3 s vs 16.8 s). A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
