"""--runtime-env-json (orchestration/runtime_env.py): checked before any cluster work, merged into the runtime env
the run gives every Ray process (orchestration.cluster.job_runtime_env), and there in a task on the cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mupvit.errors import ConfigError
from orchestration.cluster import job_runtime_env
from orchestration.runtime_env import parse_runtime_env
from orchestration.sweep import main as sweep_main
from orchestration.train import main as train_main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, message", [
    ('{"env_vars": {"NCCL_DEBUG": "INFO"', "not JSON"),
    ('["env_vars"]', "expected a JSON object"),
    ('{"env_var": {"NCCL_DEBUG": "INFO"}}', "unknown field(s) env_var; Ray's are"),
    ('{"env_vars": {"NCCL_DEBUG": 1}}', "must be of type Dict[str, str]"),
])
def test_a_bad_runtime_env_is_refused_naming_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=f"--runtime-env-json: .*{re.escape(message)}"):
        parse_runtime_env(text)


@pytest.mark.parametrize("main, target", [(train_main, "experiments/demo_digits.yaml"),
                                          (sweep_main, "experiments/sweeps/demo_mup_transfer.yaml")])
def test_the_clis_exit_2_with_one_line_before_any_cluster_work(main, target, capsys):
    assert main([str(REPO / target), "--runtime-env-json", "{nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runtime-env-json: not JSON") and err.count("\n") == 1, err


def test_the_users_env_vars_join_and_win_over_the_runs_own(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env = job_runtime_env(parse_runtime_env('{"env_vars": {"NCCL_DEBUG": "INFO", "AWS_REGION": "eu-west-1"}, '
                                            '"pip": ["six"]}'))
    assert env["env_vars"]["NCCL_DEBUG"] == "INFO" and env["env_vars"]["AWS_REGION"] == "eu-west-1"
    assert env["env_vars"]["RAY_DATA_LOG_LEVEL"] == "WARNING" and env["pip"] == ["six"]


TASK = """
import os, ray
from orchestration.cluster import connect
from orchestration.launch_config import ClusterConfig
from orchestration.runtime_env import parse_runtime_env
connect(ClusterConfig(), parse_runtime_env('{"env_vars": {"MUPVIT_PROBE": "from the command line"}}'))
print(ray.get(ray.remote(lambda: os.environ.get("MUPVIT_PROBE")).remote()))
"""


@pytest.mark.slow
def test_its_env_vars_reach_a_task_on_the_cluster(ray_env):
    done = subprocess.run([sys.executable, "-c", TASK], env=ray_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout.strip().endswith("from the command line"), done.stderr[-3000:]
