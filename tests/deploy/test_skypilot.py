"""deploy/skypilot/*.yaml through SkyPilot's own loader, then the task's `run` here.

usage: python test_skypilot.py CAMELID_BINARY

1. `sky.Task.from_yaml` accepts camelid.yaml and serve.yaml and reads back what the README
   promises (accelerator, port, readiness path, replica bounds, spot with on-demand fallback,
   the arena's store as a secret, the cache mount); serve.yaml is camelid.yaml plus `service`
   and spot; a broken copy of each is rejected.
2. The task's `run` (taken from the loaded task, not copied) starts camelid with the cloud
   parts swapped for the default model on the CPU, and /health answers 200.
"""
import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml
import sky

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy", "skypilot")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def load(name):
    return sky.Task.from_yaml(os.path.join(DEPLOY, name))


def rejected(config, what):
    """A broken config must not load."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        sky.Task.from_yaml(f.name)
    except Exception as e:  # SkyPilot raises its own ValueError subclasses
        check(True, f"rejected: {what} ({type(e).__name__})")
        return
    finally:
        os.unlink(f.name)
    check(False, f"rejected: {what} (it loaded)")


def the_files_load():
    task = load("camelid.yaml")
    (res,) = list(task.resources)
    check(res.accelerators == {"H100": 1}, f"one H100 by default: {res.accelerators}")
    check(res.ports == ["8000"], f"port 8000: {res.ports}")
    check(not res.use_spot, "the single task is on-demand")
    check(task.envs["CAMELID_PORT"] == "8000" and task.envs["CAMELID_DEVICE"] == "cuda",
          f"serves on 8000 with CUDA: {task.envs}")
    check(set(task.secrets) >= {"CAMELID_ARENA_DB", "CAMELID_API_KEY", "HF_TOKEN"},
          f"store, keys and hub token are secrets: {sorted(task.secrets)}")
    check("/cache" in task.storage_mounts and task.envs["CAMELID_CACHE"] == "/cache",
          "the model cache is the mounted bucket")
    check("--features cuda" in task.setup, "setup builds with CUDA")
    check(task.service is None, "camelid.yaml is a plain task")

    svc_task = load("serve.yaml")
    svc = svc_task.service
    check(svc is not None and svc.readiness_path == "/health", "readiness probe on /health")
    check((svc.min_replicas, svc.max_replicas) == (1, 4), "1 to 4 replicas")
    check(svc.target_qps_per_replica == 2, "autoscaled on QPS")
    check(svc.base_ondemand_fallback_replicas == 1 and svc.dynamic_ondemand_fallback,
          "spot replicas with an on-demand fallback")
    (sres,) = list(svc_task.resources)
    check(sres.use_spot and sres.accelerators == res.accelerators and sres.ports == res.ports,
          "replicas: the task's GPU and port, on spot")
    for field in ["setup", "run", "envs", "workdir"]:
        check(getattr(svc_task, field) == getattr(task, field), f"serve.yaml's {field} is camelid.yaml's")
    check({k: v.get_secret_value() for k, v in svc_task.secrets.items()}
          == {k: v.get_secret_value() for k, v in task.secrets.items()}, "same secrets")

    with open(os.path.join(DEPLOY, "serve.yaml")) as f:
        good = yaml.safe_load(f)
    bad = copy.deepcopy(good)
    bad["service"]["replica_policy"]["max_replicas"] = "many"
    rejected(bad, "max_replicas not a number")
    bad = copy.deepcopy(good)
    bad["service"]["readiness_probe"]["pathh"] = "/health"
    rejected(bad, "a misspelt readiness field")
    with open(os.path.join(DEPLOY, "camelid.yaml")) as f:
        bad = yaml.safe_load(f)
    bad["resources"]["accelerators"] = {"H100": "one"}
    rejected(bad, "an accelerator count that is not a number")
    return task


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def the_run_command_serves(task, binary):
    port = free_port()
    env = dict(os.environ)
    env.update(task.envs)
    env.update({k: v.get_secret_value() for k, v in task.secrets.items()})
    # The cloud parts: the CPU instead of CUDA, the default model instead of Vicuna, this
    # build instead of target/release, the local cache instead of the bucket.
    env.update({
        "CAMELID_DEVICE": "cpu",
        "CAMELID_MODEL": "smol=smollm2-135m-instruct",
        "CAMELID_BIN": binary,
        "CAMELID_PORT": str(port),
        "CAMELID_CACHE": os.environ.get("CAMELID_CACHE", os.path.expanduser("~/.cache/camelid")),
        "HF_HOME": tempfile.mkdtemp(),
    })
    proc = subprocess.Popen(["bash", "-c", task.run], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        status = None
        while time.time() < deadline and proc.poll() is None:
            try:
                # Bound to 0.0.0.0: reachable on loopback.
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
                    if status == 200:
                        break
            except Exception:
                pass
            time.sleep(0.5)
        check(status == 200, f"the task's run command serves /health (exit {proc.poll()})")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def main():
    task = the_files_load()
    the_run_command_serves(task, sys.argv[1])
    if failures:
        print(f"{len(failures)} checks failed", file=sys.stderr)
        sys.exit(1)


main()
