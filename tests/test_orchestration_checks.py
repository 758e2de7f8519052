"""The checks orchestration runs before any cluster work, tested without a cluster (seconds)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mupvit.config import ConfigError
from orchestration.cluster import ClusterError, check_capacity, run_env
from orchestration.launch_config import Launch, load_launch
from orchestration.ray_data_input import Placement, check_input_capacity, train_batches
from orchestration.tracking import TrackingError, check_reachable, check_store_shared, tracking_uri
from orchestration.train import run_name, set_ray_train_timings

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "experiments/demo_digits.yaml"


def demo(*sets: str, base_dir: Path = REPO) -> Launch:
    return load_launch(DEMO, list(sets), base_dir)


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_run_name_is_deterministic_and_ignores_launch_and_resumable_settings():
    name = run_name(demo())
    assert name.startswith("demo_digits-") and name == run_name(demo())
    for launch in ("tracking.experiment=x", "train.out_dir=/elsewhere", "data.num_workers=0",
                   "cluster.storage_path=/shared", "data.root=/moved", "train.log_every=7", "train.compile=true"):
        assert run_name(demo(launch)) == name, launch
    assert run_name(demo("optim.lr=1e-3")) != name
    # more workers: more devices, a run of its own (its checkpoints are refused by the other, see test_run_identity)
    assert run_name(demo("cluster.num_workers=2", "cluster.cpus_per_worker=1")) != name
    assert run_name(demo("tracking.run_name=mine")) == "mine"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(demo().tracking, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(demo().tracking, tmp_path) == "http://127.0.0.1:5000"
    given = demo("tracking.uri=sqlite:///x/m.db").tracking
    assert tracking_uri(given, tmp_path) == f"sqlite:///{tmp_path / 'x/m.db'}"
    with pytest.raises(ConfigError, match="tracking.uri: 'mlruns' is a file path"):
        tracking_uri(demo("tracking.uri=mlruns").tracking, tmp_path)


def test_unreachable_stores_fail_in_seconds(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="http://127.0.0.1:9 is not reachable"):
        check_reachable("http://127.0.0.1:9")
    assert time.monotonic() - t0 < 10
    with pytest.raises(TrackingError, match="does not exist or is not writable"):
        check_reachable(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    check_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_local_store_refused_on_a_multi_node_cluster():
    check_store_shared("sqlite:////data/mlflow.db", nodes=1)
    check_store_shared("http://head:5000", nodes=4)
    with pytest.raises(ConfigError, match="cluster has 2 nodes.*mlflow server"):
        check_store_shared("sqlite:////data/mlflow.db", nodes=2)


@pytest.mark.parametrize("sets, nodes, message", [
    (["cluster.use_gpu=true"], [node(16)], "the cluster has 0 GPU in all"),
    (["cluster.num_workers=4", "cluster.cpus_per_worker=1"], [node(2)], "needs 4; lower cluster.num_workers"),
    (["cluster.cpus_per_worker=2"], [node(1), node(1)], "only 0 worker(s)"),
    (["cluster.num_workers=2", "cluster.cpus_per_worker=1"], [node(1), node(1, alive=False)], "has 1 CPU in all"),
    (['cluster.worker_labels={"node-type": "gpu"}'], [node(16), {**node(4), "Labels": {"node-type": "cpu"}}],
     'cluster.worker_labels: no node of the cluster carries them, so no worker could start; start the training '
     'nodes with --labels="node-type=gpu"'),
    # CPUs on the unlabelled node do not count for the workers
    (['cluster.worker_labels={"node-type": "gpu"}', "cluster.num_workers=2", "cluster.cpus_per_worker=1"],
     [node(16), {**node(1), "Labels": {"node-type": "gpu"}}], "has 1 CPU in all"),
])
def test_unsatisfiable_requests_fail_with_what_is_missing(sets, nodes, message):
    with pytest.raises(ClusterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_capacity(demo(*sets).cluster, nodes)


@pytest.mark.parametrize("sets, nodes, message", [
    (["cluster.num_workers=2", "cluster.cpus_per_worker=1"], [node(2)],
     "data.pipeline ray_data: the cluster has 2 CPU, all held by cluster.num_workers=2 x 1 CPU, so no input task"),
    (["cluster.data_resource=data_cpu"], [node(16)],
     "cluster.data_resource: no node of the cluster with a CPU matches, so no input task of data.pipeline ray_data "
     "could run; start the input nodes with --resources='{\"data_cpu\": N}'"),
    (['cluster.data_labels={"node-type": "cpu"}'], [node(16), {**node(4), "Labels": {"node-type": "gpu"}}],
     'cluster.data_labels: no node .* with --labels="node-type=cpu" or unset cluster.data_labels'),
    (['cluster.data_labels={"node-type": "cpu"}', "cluster.data_resource=data_cpu"],
     [{**node(4), "Labels": {"node-type": "cpu"}}, {"Alive": True, "Resources": {"CPU": 8.0, "data_cpu": 8.0}}],
     "cluster.data_resource and cluster.data_labels: no node"),  # both on the same node, not one each
])
def test_ray_data_input_without_a_cpu_fails_instead_of_waiting(sets, nodes, message):
    launch = demo("data.pipeline=ray_data", *sets)
    with pytest.raises(ClusterError, match=message):
        check_input_capacity(launch.run, launch.cluster, nodes)
    check_input_capacity(demo(*sets).run, launch.cluster, nodes)  # the local loader needs no spare CPU


def test_ray_data_input_with_a_spare_cpu_or_an_input_node_passes():
    launch = demo("data.pipeline=ray_data", "cluster.num_workers=2", "cluster.cpus_per_worker=1")
    check_input_capacity(launch.run, launch.cluster, [node(3)])
    launch = demo("data.pipeline=ray_data", "cluster.data_resource=data_cpu", "cluster.data_cpus=4")
    gpu_node, cpu_node = node(8, gpus=1), {"Alive": True, "Resources": {"CPU": 16.0, "data_cpu": 16.0}}
    check_input_capacity(launch.run, launch.cluster, [gpu_node, cpu_node])
    assert train_batches(launch.run, launch.cluster).keywords["placement"] == Placement(4, "data_cpu")
    assert train_batches(demo().run, launch.cluster) is None  # local: mupvit's own loader
    launch = demo("data.pipeline=ray_data", 'cluster.data_labels={"node-type": "cpu"}')
    cpu_node = {**node(16), "Labels": {"node-type": "cpu", "ray.io/node-id": "x"}}
    check_input_capacity(launch.run, launch.cluster, [{**node(8, gpus=1), "Labels": {"node-type": "gpu"}}, cpu_node])
    assert train_batches(launch.run, launch.cluster).keywords["placement"] == Placement(label={"node-type": "cpu"})


@pytest.mark.parametrize("labels, message", [
    ('{"node-type": ""}', "needs a key and a value"), ('{"": "cpu"}', ""),
    ('["cpu"]', ""), ('{"node-type": 3}', ""), ('{"node-type": "!cpu"}', "only exact values"),
    ('{"node-type": "in(cpu, spot)"}', "only exact values")])
@pytest.mark.parametrize("field", ["data_labels", "worker_labels"])
def test_a_label_selector_without_a_key_or_a_value_or_with_an_operator_is_refused(field, labels, message):
    with pytest.raises(ConfigError, match=f"cluster.{field}.*{message}"):
        demo("data.pipeline=ray_data", f"cluster.{field}={labels}")


def test_satisfiable_requests_pass():
    check_capacity(demo("cluster.num_workers=2", "cluster.cpus_per_worker=1").cluster, [node(1), node(1)])
    trainers = {**node(2), "Labels": {"node-type": "gpu", "ray.io/node-id": "x"}}
    launch = demo('cluster.worker_labels={"node-type": "gpu"}', "cluster.num_workers=2", "cluster.cpus_per_worker=1")
    check_capacity(launch.cluster, [{**node(16), "Labels": {"node-type": "cpu"}}, trainers])
    check_capacity(demo("cluster.use_gpu=true", "cluster.num_workers=8", "cluster.cpus_per_worker=8").cluster,
                   [node(64, gpus=8)])


def test_resolution_sets_devices_and_absolute_storage(tmp_path):
    launch = demo("cluster.num_workers=2", "cluster.cpus_per_worker=1", base_dir=tmp_path)
    assert launch.run.train.devices == 2 and launch.cluster.storage_path == str(tmp_path / "ray_results")
    assert demo("cluster.storage_path=s3://b/p").cluster.storage_path == "s3://b/p"
    with pytest.raises(ConfigError, match="train.batch_size: 128 is not divisible by train.devices"):
        demo("cluster.num_workers=3")
    with pytest.raises(ConfigError, match="cluster.fail_at_step: needs a local"):
        demo("cluster.fail_at_step=3", "cluster.storage_path=s3://b/p")


def test_an_elastic_worker_range_sets_the_devices_of_its_most_workers_and_asks_for_its_fewest():
    launch = demo("cluster.num_workers=[1, 2]", "cluster.cpus_per_worker=1", "cluster.resize_check_s=5")
    assert (launch.run.train.devices, launch.run.train.min_devices) == (2, 1)  # MixUp pairs of 2 devices
    assert launch.cluster.ray_num_workers == (1, 2) and demo().cluster.ray_num_workers == 1
    check_capacity(launch.cluster, [node(1)])  # one worker's node is enough to start
    with pytest.raises(ClusterError, match=r"has 0.5 CPU in all, but cluster.num_workers=1 x 1 CPU"):
        check_capacity(launch.cluster, [node(0.5)])
    with pytest.raises(ClusterError, match="all held by cluster.num_workers=2 x 1 CPU"):  # it may grow to 2
        check_input_capacity(demo("data.pipeline=ray_data", "cluster.num_workers=[1, 2]").run, launch.cluster,
                             [node(2)])


@pytest.mark.parametrize("sets, message", [
    (["cluster.num_workers=[2, 1]"], r"cluster.num_workers: \[2, 1\]: give one count, or \[min, max\] with 0 < min"),
    (["cluster.num_workers=[0, 2]"], r"cluster.num_workers: \[0, 2\]: give one count"),
    (["cluster.num_workers=[1, 2, 4]"], r"cluster.num_workers: \[1, 2, 4\]: give one count"),
    (["cluster.num_workers=[1.5, 2]"], "cluster.num_workers: got .*, expected"),
    (["cluster.num_workers=[3, 4]"], r"train.min_devices: an elastic run of 3 to 4 devices \(cluster.num_workers: "
     r"\[3, 4\]\) cannot split the 4 micro-batches of a step .* over 3 device\(s\); set train.accum_steps to a "
     "multiple of 3"),
    (["cluster.num_workers=[1, 2]", 'cluster.worker_labels={"node-type": "gpu"}'],
     "an elastic run is sized by every node's CPUs"),
    (["cluster.num_workers=[1, 2]", "cluster.resize_check_s=-1"], "cluster.resize_check_s: got -1"),
])
def test_a_bad_elastic_worker_range_is_refused_naming_the_fix(sets, message):
    with pytest.raises(ConfigError, match=message):
        demo(*sets)


def test_bad_cluster_values_fail_in_config_validation():
    with pytest.raises(ConfigError, match="cluster.num_workers: got 0"):
        demo("cluster.num_workers=0")
    with pytest.raises(ConfigError, match="cluster.max_failures: -2: give the worker failures to survive"):
        demo("cluster.max_failures=-2")
    assert demo("cluster.max_failures=-1").cluster.max_failures == -1  # always restart: a spot cluster
    with pytest.raises(ConfigError, match="cluster.data_cpus: got 0"):
        demo("cluster.data_cpus=0")


def test_an_unreachable_cluster_address_fails_in_seconds_naming_it():
    import socket
    import time

    from orchestration.cluster import ClusterError, check_reachable

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 15
    check_reachable("auto")  # Ray's own address words are left to Ray


def test_ray_train_polls_its_workers_often_unless_the_user_says_otherwise(monkeypatch):
    """At Ray's 2 s default, every report after the first would stall the workers until the controller's next poll."""
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", raising=False)
    set_ray_train_timings(demo("cluster.resource_wait_s=45").cluster)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
    assert os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "45"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    set_ray_train_timings(demo().cluster)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "5"


def test_run_env_carries_the_bucket_the_mlflow_login_and_ray_datas_log_level(monkeypatch):
    for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_", "RAY_DATA_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "not a login")
    assert run_env() == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "MLFLOW_TRACKING_PASSWORD": "pw",
                         "RAY_DATA_LOG_LEVEL": "WARNING"}  # Ray Data's INFO lines kept off the run's console
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "DEBUG")  # a user's own level wins
    assert run_env()["RAY_DATA_LOG_LEVEL"] == "DEBUG"
