"""A cluster that shares nothing, on one machine: a head of 1 CPU that listens beyond loopback (token auth on) and
a worker node of 1 CPU on "host B" (tests/second_host.py: its own network and mount namespaces), an S3-compatible server
(moto) and the team's `mlflow server` (PostgreSQL, basic-auth, proxied artifacts) on this machine's end of host B's
veth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mupvit.data import storage as storage_module
from mupvit.data.storage import filesystem
from mupvit.data.upload import main as upload_main
from orchestration.local_head import start_head, stop_head
from orchestration.loopback import BIN
from orchestration.ports import free_port_block
from orchestration.tracking import CHECKPOINT_TAG, WEIGHTS_FILE, WEIGHTS_FOLDER
from orchestration.train_job import main as train_job_main
from orchestration.train_job import train_job_command

from .helpers import MotoServer, freeze, listeners, loopback, worker_port_bases
from .mlflow_server import Postgres, mlflow_server
from .second_host import PORTS, can_make_hosts, host_b, ip, lose_node, replace_node, start_node
from .test_orchestration import STEPS, final_model, write_config
from .test_security import TASK, http_status, torch_listeners, without_token

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not can_make_hosts(), reason="needs root, ip and unshare")]
BUCKET = "runs"
# The nodes' labels, as a cloud cluster's node groups carry them: the head trains, host B is a CPU-only input node
# (cluster.worker_labels and cluster.data_labels select them; other tests ignore them).
TRAINING_NODE, INPUT_NODE = {"node-type": "trainer"}, {"node-type": "cpu"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Iterator[SimpleNamespace]:
    """The head (host A, 1 CPU), host B (1 CPU: a 2-worker run puts one worker on each), labelled TRAINING_NODE and
    INPUT_NODE, and on this machine's end
    of host B's veth an S3 server holding the digits dataset (mupvit.data.upload) and the team's `mlflow server`
    (tests/mlflow_server.py: PostgreSQL, basic-auth, artifacts proxied to the S3 server). The AWS variables and
    the MLflow login of this process (the driver's side) are set while the module runs, after the head started;
    neither node ever has them."""
    stack = ExitStack()
    try:
        pg, pool = Postgres(), ThreadPoolExecutor(2)
        stack.callback(pg.stop)
        stack.callback(pool.shutdown)  # first: a start under way ends before PostgreSQL is stopped
        starting = pool.submit(pg.start)  # initdb and pg_ctl (seconds) while the head starts
        head = start_head(num_cpus=1, num_gpus=0, ports=free_port_block(worker_port_bases()), loopback_only=False,
                          labels=TRAINING_NODE)
        stack.callback(stop_head, head)
        host = stack.enter_context(host_b(head, labels=INPUT_NODE))
        moto = MotoServer(host.host_ip)
        moto.start()
        stack.callback(moto.stop)
        saved = {k: os.environ.get(k) for k in moto.env()}
        stack.callback(restore, saved)
        os.environ.update(moto.env())
        storage_module._FILESYSTEMS.clear()  # none made before these variables
        stack.callback(storage_module._FILESYSTEMS.clear)
        filesystem("s3://").mkdir(BUCKET)
        uploading = pool.submit(upload_main, [str(digits_root), f"s3://{BUCKET}/digits"])  # while MLflow starts
        starting.result()
        server = stack.enter_context(mlflow_server(tmp_path_factory.mktemp("host_b_mlflow"), moto, host.host_ip, pg))
        saved.update({k: os.environ.get(k) for k in server.env})
        os.environ.update(server.env)
        assert uploading.result() == 0
        yield SimpleNamespace(head=head, host=host, moto=moto, mlflow=server)
    finally:
        stack.close()


def restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_host_b_joins_and_the_heads_listeners_beyond_loopback_refuse_a_client_without_the_token(cluster, request):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: the cluster is built once, in its group's xdist worker
        assert request.node.nodeid.endswith("@second-host"), request.node.nodeid  # (tests/conftest.py)
    head, host = cluster.head, cluster.host
    outside = {(a, port) for a, port in listeners(head.processes()) if not loopback(a)}
    assert outside, "the head listens on loopback only: host B could not have joined"
    # Every one of them is reachable from host B (at the veth address, or this machine's own, routed through it).
    answered = {port for _, port in outside if http_status(port, host.host_ip) not in (None, 401)}
    # Ray 2.60's two Prometheus servers (read-only metrics; no switch to turn them off: docs/RAY-MLFLOW.md) are
    # the only ones that answer without the token.
    assert answered <= {head.ports.autoscaler_metrics, head.ports.dashboard_metrics}, answered
    refused = host.run([sys.executable, "-c", TASK], {**without_token(head.env()),
                                                      "RAY_ADDRESS": f"{host.host_ip}:{head.ports.gcs}"})
    assert refused.returncode != 0 and "Authentication token is missing or incorrect" in refused.stderr, \
        refused.stderr[-2000:]


def test_host_b_leaves_nothing_behind_when_it_fails_to_start(cluster):
    """Its teardown fails the test if anything is left (namespace, veth, a process); here it must not."""
    with pytest.raises(RuntimeError, match="did not join"), host_b(cluster.head, timeout_s=0.5):
        pass
    mine = f"mupvit-b{os.getpid() % 100000}n"
    assert [name for name in ip("netns", "list").stdout.split() if name.startswith(mine)] == [cluster.host.netns]


def bucket_config(folder: Path, digits_root: Path, **overrides) -> Path:
    """tests/test_orchestration.py's tiny 2-worker digits run (the session's `two_worker_run`), reading the digits
    from the bucket (the same files: the same samples) and storing in the bucket, as a YAML file in `folder`."""
    # Two loader processes per worker overlap the bucket's latency (the samples do not depend on their number).
    settings = {"data.dataset": "imagefolder", "data.root": f"s3://{BUCKET}/digits", "data.num_workers": 2,
                "cluster.num_workers": 2, "cluster.max_failures": 2, "cluster.storage_path": f"s3://{BUCKET}/ray",
                **overrides}
    return write_config(folder, digits_root, **settings)


def driver(cluster: SimpleNamespace, submit: Path, config: Path, *args: str) -> subprocess.Popen:
    """orchestration.train started in `submit` (an empty folder) on the cluster: token, AWS and MLflow variables
    (the server's URI and login: the login reaches the workers on host B only through Ray's runtime env)."""
    env = {**cluster.head.env(), **cluster.moto.env(), **cluster.mlflow.env}
    return subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config), *args], cwd=submit, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mlflow_runs(cluster: SimpleNamespace, name: str) -> list:
    client = MlflowClient(cluster.mlflow.url)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if r.info.run_name == name]


def wait_for(what: str, done, first: subprocess.Popen, timeout_s: float = 240) -> None:
    """Poll `done()` while the first driver runs; fail naming `what` if it ends or time runs out first."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert first.poll() is None, f"the run ended before {what}: {first.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.1)


def test_an_elastic_two_host_run_goes_on_with_one_worker_when_host_b_dies_and_grows_back_with_everything_in_the_bucket(
        cluster, two_worker_run, digits_root, tmp_path):
    """A `ray job submit` with the runtime env file of `python -m orchestration.train_job` (the job's driver runs on
    the head, which has none of the variables either) of an elastic run of 1 to 2 workers, one worker per host. Host
    B's node dies mid-run: the run goes on from the checkpoint in the bucket with the head's worker alone, which
    checkpoints; a fresh node (nothing of the old one's disk) takes B's place, and the run grows back to 2 workers
    from that checkpoint. It ends on the parameters of the uninterrupted 2-worker run, within the float error of
    summing the 2 shares' gradients in another order (see tests/test_distributed.py; the samples and the pairs are
    the same)."""
    (tmp_path / "submit").mkdir()
    # Resize checks every 2 s. Ray Train's elastic policy learns of a lost node up to 20 s late and first asks for
    # 2 workers: that worker group fails after cluster.resource_wait_s, then the next asks for 1; restarts are not
    # counted (-1, as on a spot cluster), however many such tries a loaded machine takes. The wait bounds only the
    # placement of a group (Ray Train's RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S), which the resources of a live node
    # meet at once: 10 s loses no group that could start, and each try for the lost node's worker costs 10 s.
    config = bucket_config(tmp_path / "config", digits_root, **{
        "cluster.num_workers": [1, 2], "cluster.resize_check_s": 2, "cluster.resource_wait_s": 10,
        "cluster.max_failures": -1})
    env_file = tmp_path / "config" / "job_env.yaml"
    assert train_job_main([str(env_file)]) == 0  # the submitter: the fixture set the variables in this process
    assert env_file.stat().st_mode & 0o777 == 0o600  # it holds the bucket's credentials and the MLflow login
    first = subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.head.dashboard_url, "--working-dir", str(REPO),
         "--runtime-env", str(env_file), "--",
         *train_job_command(str(config), ["tracking.run_name=onb"], tmp_path / "submit" / "summary.json")],
        cwd=tmp_path / "submit", env=cluster.head.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fs = filesystem("s3://")
    snapshot = f"{BUCKET}/ray/onb/checkpoint_manager_snapshot.json"

    def registered_steps() -> list[int]:  # a checkpoint only uploaded is lost with its worker
        fs.invalidate_cache()
        return [r["metrics"]["step"] for r in json.loads(fs.cat(snapshot))["checkpoint_results"]] \
            if fs.exists(snapshot) else []

    # Once the first driver holds the run (its MLflow run is opened after the lock), a second one is refused.
    wait_for("MLflow run", lambda: mlflow_runs(cluster, "onb"), first)
    second = driver(cluster, tmp_path / "config", config, "--set", "tracking.run_name=onb")
    wait_for("checkpoint registered by Ray Train", registered_steps, first)
    # Mid-run on two hosts: torch's rendezvous store and gloo's sockets listen on the hosts' own addresses, neither
    # on every interface nor on loopback (which the other host could not reach).
    found = torch_listeners([*cluster.head.processes(), *cluster.host.pids()], [cluster.head.ports, PORTS])
    assert found and not any(a.is_unspecified or loopback(a) for a, _ in found), sorted(found, key=str)
    assert any(str(a) == cluster.host.node_ip for a, _ in found), found  # a worker trains on host B
    lose_node(cluster.host, cluster.head)
    try:
        by_two = max(registered_steps())
        # The head's worker alone trains on and checkpoints; then it is held (SIGSTOP) so that the run cannot end
        # before host B is back, and the resize to 2 workers starts from that checkpoint (it kills the held worker).
        console = f"s3://{BUCKET}/ray/onb/console.log"

        def checkpointed_alone() -> bool:  # registered, and its console log (uploaded after it) in the bucket
            if max(registered_steps()) <= by_two:  # (it refreshes the bucket's listing)
                return False
            text = fs.cat(console).decode() if fs.exists(console) else ""
            saved = [int(step) for step in re.findall(r"\[step (\d+)\] checkpoint", text)]
            return "devices=1, accum_steps=2" in text and max(saved, default=0) > by_two

        wait_for("checkpoint of the 1-worker group", checkpointed_alone, first, timeout_s=300)
        freeze(cluster.head, "ray::RayTrainWorker")
    finally:  # host B back, whatever happened: the module's other tests run on both nodes
        start_node(cluster.host, cluster.head, [], 1, 120)
    _, err2 = second.communicate(timeout=120)
    assert first.poll() is None, "the first driver ended before the second was refused: the check proves nothing"
    errors = [line for line in err2.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, err2[-3000:]
    assert re.search(rf"run onb: s3://{BUCKET}/ray/onb is in use by pid \d+ on ", errors[0]), errors[0]
    out, err = first.communicate(timeout=400)
    assert first.returncode == 0 and "succeeded" in out, out[-4000:] + err[-2000:]
    # Nothing in the submit folder but the summary; checkpoints and console log are in the bucket.
    assert [p.name for p in (tmp_path / "submit").iterdir()] == ["summary.json"]
    summary = json.loads((tmp_path / "submit" / "summary.json").read_text())
    assert summary["checkpoint"].startswith(f"s3://{BUCKET}/ray/onb/checkpoint_"), summary["checkpoint"]
    with fs.open(summary["checkpoint"] + "/checkpoint.pt") as stored:
        final = torch.load(stored, weights_only=True)["model"]
    expected = two_worker_run
    for key, tensor in final.items():
        torch.testing.assert_close(tensor, expected[key], rtol=1e-4, atol=5e-5)
    # Where the worker groups started, and with how many workers: 2 at step 0; 1 at the checkpoint registered by
    # the two (resumed, not restarted; 2 micro-batches a step, the global batch kept); 2 again at the 1-worker
    # group's checkpoint. The console log of every attempt, continued across hosts.
    fs.invalidate_cache()
    log = fs.cat(console).decode()
    starts = [(int(n), int(accum), int(step))
              for n, accum, step in re.findall(r"devices=(\d+), accum_steps=(\d+),.*start_step=(\d+)", log)]
    assert [(n, accum) for n, accum, _ in starts] == [(2, 1), (1, 2), (2, 1)], starts
    assert starts[0][2] == 0 and 0 < starts[1][2] <= by_two < starts[2][2] < STEPS, (starts, by_two)
    assert f"[step {STEPS}/{STEPS}" in log, log[-2000:]
    # One MLflow run on the team's server, FINISHED, every step once, its weights, config and console log there.
    (run,) = mlflow_runs(cluster, "onb")
    assert run.info.status == "FINISHED" and run.info.run_id == summary["mlflow_run_id"]
    # No .git in a job's working dir: the submitting checkout's commit reached the job through the env file.
    assert run.data.tags["git_commit"] == yaml.safe_load(env_file.read_text())["env_vars"]["MUPVIT_GIT_COMMIT"]
    client = MlflowClient(cluster.mlflow.url)
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}) == \
        list(range(1, STEPS + 1))
    assert run.data.tags[CHECKPOINT_TAG].endswith("/checkpoint.pt"), run.data.tags[CHECKPOINT_TAG]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the server writes the bucket
    # mupvit.evaluate on the driver's side, with the login, loads the weights from the server (checked below, once
    # it is done: it runs while the artifacts are looked at).
    weights = f"runs:/{run.info.run_id}/{WEIGHTS_FOLDER}/{WEIGHTS_FILE}"
    evaluate = subprocess.Popen([sys.executable, "-m", "mupvit.evaluate", str(config), "--checkpoint", weights],
                                cwd=tmp_path / "config", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **cluster.moto.env(), **cluster.mlflow.env})
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"console.log", WEIGHTS_FOLDER, "config.yaml"} <= names, names
    logged = Path(client.download_artifacts(run.info.run_id, "console.log", str(tmp_path)))
    assert f"[step {STEPS}/{STEPS}" in logged.read_text()
    out, err = evaluate.communicate(timeout=300)
    assert evaluate.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["layout"] == "timm"
    assert result["val"]["acc1"] == pytest.approx(run.data.metrics["final/val/acc1"], abs=1e-6)


def test_ray_data_input_on_the_cpu_node_reads_the_bucket_survives_losing_that_node_and_resumes_exactly(
        cluster, reference, digits_root, tmp_path):
    """data.pipeline ray_data on a training node and a CPU-only input node: the one worker on the head
    (cluster.worker_labels), the input tasks on host B only (cluster.data_labels), reading the digits from the
    bucket. A worker failure at step 6 resumes from step 4's checkpoint with a dataset that starts there; host B
    dies with that failure and a fresh one takes its place, where the resumed input runs (the resumed worker waits
    for it). The run ends on the parameters of the uninterrupted local run, bit for bit."""
    config = bucket_config(tmp_path / "config", digits_root, **{
        "data.pipeline": "ray_data", "cluster.num_workers": 1, "cluster.storage_path": "ray_results",
        "cluster.worker_labels": TRAINING_NODE, "cluster.data_labels": INPUT_NODE, "cluster.fail_at_step": 6})
    first = driver(cluster, tmp_path, config, "--set", "tracking.run_name=input_node")
    marker = tmp_path / "ray_results" / "input_node" / "injected_failure.done"
    # The digits' tiny batches leave the input far ahead of the worker (its budget holds hundreds of them), so a
    # node lost mid-window may have nothing left to build; lost with the failure, the resumed window's input (steps
    # 5-20) can only run on its successor. (A loss mid-window, blocks built and not yet read, was seen rebuilt on
    # the fresh node too; its timing cannot be forced here.)
    wait_for("the injected failure", marker.exists, first)
    replace_node(cluster.host, cluster.head)
    out, err = first.communicate(timeout=400)
    assert first.returncode == 0, out[-4000:] + err[-3000:]
    assert "Dataset" not in err and "SplitCoordinator" not in err, err[-3000:]  # no Ray Data chatter (run_env)
    summary = json.loads(out.strip().splitlines()[-1])
    final, expected = final_model(summary), reference
    for key, tensor in final.items():
        assert torch.equal(tensor, expected[key]), key
    # Every input task ran on host B: on the first node, and on the fresh one after it.
    ran_on = input_task_nodes(cluster.head)
    assert set(ran_on.values()) == {cluster.host.node_ip}, ran_on
    assert len(ran_on) == 2, ran_on


def input_task_nodes(head) -> dict[str, str]:
    """{node id: node address} of the nodes where the cluster's Ray Data input tasks (step_batch) ran."""
    def listed(kind: str) -> list[dict]:
        done = subprocess.run([str(BIN / "ray"), "list", kind, "--address", head.dashboard_url, "--detail",
                               "--format", "json", "--limit", "10000"], env=head.env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    address = {n["node_id"]: n["node_ip"] for n in listed("nodes")}
    # (a task the failed attempt left pending never got a node: node_id None)
    return {t["node_id"]: address[t["node_id"]] for t in listed("tasks")
            if "step_batch" in t["name"] and t["node_id"] is not None}


def test_a_bucket_that_does_not_exist_is_refused_before_the_mlflow_run(cluster, digits_root, tmp_path):
    config = bucket_config(tmp_path, digits_root, **{"cluster.storage_path": "s3://nosuch/ray"})
    done = driver(cluster, tmp_path, config, "--set", "tracking.run_name=nobucket")
    _, err = done.communicate(timeout=180)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "cannot write to bucket 'nosuch'" in errors[0] and "no such bucket" in errors[0], errors[0]
    assert not mlflow_runs(cluster, "nobucket")


def test_a_mup_sweep_on_the_cluster_keeps_its_trials_in_the_bucket(cluster, digits_root, tmp_path):
    """Two 1-CPU µP trials at once, one on each node (neither started with the AWS variables or the MLflow login:
    they reach the trials in the job's runtime env); Tune's state and the trials' checkpoints in the bucket."""
    (tmp_path / "submit").mkdir()
    base = bucket_config(tmp_path, digits_root, **{"cluster.num_workers": 1, "train.total_steps": 4,
                                                   "train.eval_every": None, "evals": {},
                                                   "train.ckpt_every": 4, "train.log_every": 2,
                                                   "model.base_width": 32})
    spec = {"name": "onbucket", "base": str(base), "space": {"optim.lr": {"log2_grid": [-8, -6]},
                                                            "model.parametrization": {"choice": ["mup"]}},
            "search": {"algorithm": "grid"}, "metric": "train/loss_avg", "mode": "min", "num_samples": 1,
            "max_concurrent": 2, "trial_cpus": 1}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**cluster.head.env(), **cluster.moto.env(), **cluster.mlflow.env}
    done = subprocess.run([sys.executable, "-m", "orchestration.sweep", str(tmp_path / "sweep.yaml"),
                           "--summary-json", "summary.json"], cwd=tmp_path / "submit", env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert [p.name for p in (tmp_path / "submit").iterdir()] == ["summary.json"]
    summary = json.loads((tmp_path / "submit" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["errored"] == 0, (summary, done.stderr[-6000:])
    # Each trial's checkpoint is in the bucket, and Tune's record of where it ran names both nodes.
    fs = filesystem("s3://")
    stored = fs.find(f"{BUCKET}/ray/sweeps/onbucket")
    checkpoints = {p.split("/")[4] for p in stored if p.endswith("/checkpoint.pt")}
    assert len(checkpoints) == 2, stored
    nodes = {json.loads(line)["node_ip"] for p in stored if p.endswith("/result.json")
             for line in fs.cat(p).decode().splitlines()}
    assert cluster.host.node_ip in nodes and len(nodes) == 2, nodes
    client = MlflowClient(cluster.mlflow.url)
    found = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                               filter_string="tags.sweep = 'onbucket'")
    (parent,) = [r for r in found if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_id == summary["parent_run_id"] and len(children) == 2
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}
