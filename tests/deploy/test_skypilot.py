"""deploy/skypilot/*.yaml through SkyPilot's own loader, then the task's `run` here.

usage: python test_skypilot.py CAMELID_BINARY

1. `sky.Task.from_yaml` accepts camelid.yaml and serve.yaml and reads back what the README
   promises (accelerator, port, readiness path and delay, replica bounds, spot with on-demand
   fallback, the arena's store as a secret, the cache mount and its bucket named by an env,
   hub downloads off the bucket, the per-address arena limits behind the load balancer);
   serve.yaml is camelid.yaml plus `service`, spot and those limits; a broken copy of each is
   rejected.
2. The task's `setup` (from the loaded task) builds for the GPU nvidia-smi reports unless
   CUDA_COMPUTE_CAP is given: run here with stand-ins for nvidia-smi, nvcc and cargo.
3. The service's `run` (taken from the loaded task, not copied) starts camelid with its envs
   and the cloud parts swapped for the default model on the CPU, and /health answers 200.
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
    check(int(task.envs["CAMELID_KV_CACHE_MB"]) >= 8192,
          f"a GPU's KV cache, not the CPU default: {task.envs}")
    check(task.envs["CAMELID_PORT"] == "8000" and task.envs["CAMELID_DEVICE"] == "cuda",
          f"serves on 8000 with CUDA: {task.envs}")
    check(set(task.secrets) >= {"CAMELID_ARENA_DB", "CAMELID_API_KEY", "HF_TOKEN"},
          f"store, keys and hub token are secrets: {sorted(task.secrets)}")
    check("/cache" in task.storage_mounts and task.envs["CAMELID_CACHE"] == "/cache",
          "the model cache is the mounted bucket")
    # hf-hub makes symlinks in its cache (and fails when it cannot); the bucket's rclone mount
    # (MOUNT_CACHED) makes none: the hub cache stays on the machine's disk.
    hf_home = task.envs.get("HF_HOME", "~/.cache/huggingface")
    check(not any(hf_home == m or hf_home.startswith(m.rstrip("/") + "/") for m in task.storage_mounts),
          f"the hub cache (HF_HOME={hf_home}) is not on a bucket mount")
    # Bucket names are global: the name comes from an env the operator overrides.
    check(task.storage_mounts["/cache"].name == task.envs.get("CAMELID_CACHE_BUCKET") == "camelid-model-cache",
          f"the bucket is named by CAMELID_CACHE_BUCKET: {task.storage_mounts['/cache'].name}")
    with open(os.path.join(DEPLOY, "camelid.yaml")) as f:
        mine = sky.Task.from_yaml_config(yaml.safe_load(f),
                                         env_overrides=[("CAMELID_CACHE_BUCKET", "acme-camelid-cache")])
    check(mine.storage_mounts["/cache"].name == "acme-camelid-cache",
          f"--env CAMELID_CACHE_BUCKET names the bucket: {mine.storage_mounts['/cache'].name}")
    check(task.envs.get("CUDA_COMPUTE_CAP") == "", "the compute capability is the GPU's unless given")
    check("--features cuda" in task.setup, "setup builds with CUDA")
    check(task.service is None, "camelid.yaml is a plain task")

    svc_task = load("serve.yaml")
    svc = svc_task.service
    check(svc is not None and svc.readiness_path == "/health", "readiness probe on /health")
    # SkyServe runs `setup` inside the replica's job: the delay covers a cold CUDA build, the
    # download and the load, not just the last two.
    check(svc.initial_delay_seconds >= 3600,
          f"the readiness delay covers setup, download and load: {svc.initial_delay_seconds} s")
    check((svc.min_replicas, svc.max_replicas) == (1, 4), "1 to 4 replicas")
    check(svc.target_qps_per_replica == 2, "autoscaled on QPS")
    check(svc.lb_stream_timeout_seconds >= 600,
          f"whole answers of minutes pass the load balancer: {svc.lb_stream_timeout_seconds} s")
    check(svc.base_ondemand_fallback_replicas == 1 and svc.dynamic_ondemand_fallback,
          "spot replicas with an on-demand fallback")
    (sres,) = list(svc_task.resources)
    check(sres.use_spot and sres.accelerators == res.accelerators and sres.ports == res.ports,
          "replicas: the task's GPU and port, on spot")
    for field in ["setup", "run", "workdir", "file_mounts"]:
        check(getattr(svc_task, field) == getattr(task, field), f"serve.yaml's {field} is camelid.yaml's")
    check(svc_task.storage_mounts["/cache"].name == task.storage_mounts["/cache"].name
          and svc_task.storage_mounts["/cache"].mode == task.storage_mounts["/cache"].mode,
          "serve.yaml's bucket mount is camelid.yaml's")
    # Behind SkyServe's load balancer every visitor has the balancer's address (it adds no
    # X-Forwarded-For): the per-address limits are set for the whole service, and the header
    # is not trusted.
    behind_lb = {
        "CAMELID_ARENA_ADDRESS_TURNS_PER_MINUTE": "480",
        "CAMELID_ARENA_ADDRESS_VOTES_PER_MINUTE": "480",
        "CAMELID_ARENA_ADDRESS_TURNS_IN_FLIGHT": "0",
        "CAMELID_ARENA_TRUST_FORWARDED_FOR": "false",
        "CAMELID_ARENA_DB_REQUIRED": "true",
        "CAMELID_ARENA_DB_MAX_CONNECTIONS": "4",
    }
    check(svc_task.envs == {**task.envs, **behind_lb} and not set(behind_lb) & set(task.envs),
          f"serve.yaml's envs are camelid.yaml's plus the arena's limits behind the load balancer: "
          f"{sorted(set(svc_task.envs.items()) ^ set(task.envs.items()))}")
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
    return task, svc_task


def the_setup_builds_for_the_gpu(task):
    """`setup` with stand-ins: an nvidia-smi that reports an A100 (8.0), an nvcc, a cargo that
    records what it was asked and CUDA_COMPUTE_CAP, an empty ~/.cargo/env."""
    def built_for(extra_env):
        with tempfile.TemporaryDirectory() as tmp:
            bin_dir = os.path.join(tmp, "bin")
            os.makedirs(bin_dir)
            os.makedirs(os.path.join(tmp, ".cargo"))
            open(os.path.join(tmp, ".cargo", "env"), "w").close()
            record = os.path.join(tmp, "cargo-called")
            stubs = {
                "nvidia-smi": 'case "$*" in *compute_cap*) echo "8.0";; *) exit 1;; esac\n',
                "cargo": f'echo "$CUDA_COMPUTE_CAP $*" > {record}\n',
                # The image's CUDA toolkit, which setup requires (the cudarc crate runs it).
                "nvcc": 'echo "Cuda compilation tools, release 13.0"\n',
            }
            for name, body in stubs.items():
                path = os.path.join(bin_dir, name)
                with open(path, "w") as f:
                    f.write("#!/bin/sh\n" + body)
                os.chmod(path, 0o755)
            env = dict(os.environ)
            env.update(task.envs)
            env.update({"HOME": tmp, "PATH": bin_dir + os.pathsep + os.environ["PATH"]})
            env.update(extra_env)
            r = subprocess.run(["bash", "-c", task.setup], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0 or not os.path.exists(record):
                return f"setup failed ({r.returncode}): {r.stderr.strip()}"
            with open(record) as f:
                return f.read().strip()

    got = built_for({})
    check(got == "80 build --release -p camelid --features cuda",
          f"setup builds for the GPU's compute capability (A100: 80): {got}")
    got = built_for({"CUDA_COMPUTE_CAP": "89"})
    check(got == "89 build --release -p camelid --features cuda",
          f"setup builds for a given CUDA_COMPUTE_CAP (89): {got}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def the_run_command_serves(task, binary, arena_db=None):
    port = free_port()
    env = dict(os.environ)
    env.update(task.envs)
    env.update({k: v.get_secret_value() for k, v in task.secrets.items()})
    # The cloud parts: the CPU instead of CUDA, the default model instead of Vicuna, this
    # build instead of target/release, the local cache instead of the bucket.
    env.update({
        "CAMELID_DEVICE": "cpu",
        "CAMELID_MODEL": "smol=smollm2-135m-instruct",
        "CAMELID_KV_CACHE_MB": "64",
        "CAMELID_BIN": binary,
        "CAMELID_PORT": str(port),
        "CAMELID_CACHE": os.environ.get("CAMELID_CACHE", os.path.expanduser("~/.cache/camelid")),
        "HF_HOME": tempfile.mkdtemp(),
    })
    if arena_db is not None:
        env["CAMELID_ARENA_DB"] = arena_db
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


def the_service_needs_its_store(svc_task, binary):
    """A replica launched without the CAMELID_ARENA_DB secret (empty: unset by `run`) exits
    at once, naming it, rather than keep the arena in its own memory."""
    env = dict(os.environ)
    env.update(svc_task.envs)
    env.update({k: v.get_secret_value() for k, v in svc_task.secrets.items()})
    env.update({"CAMELID_DEVICE": "cpu", "CAMELID_MODEL": "smol=smollm2-135m-instruct",
                "CAMELID_BIN": binary, "CAMELID_PORT": str(free_port()), "HF_HOME": tempfile.mkdtemp()})
    env.pop("CAMELID_ARENA_DB", None)
    r = subprocess.run(["bash", "-c", svc_task.run], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    check(r.returncode != 0 and "CAMELID_ARENA_DB" in r.stderr,
          f"the service refuses to start without its store (exit {r.returncode}): {r.stderr[-500:]}")


def main():
    task, svc_task = the_files_load()
    the_setup_builds_for_the_gpu(task)
    the_service_needs_its_store(svc_task, sys.argv[1])
    # serve.yaml's envs hold camelid.yaml's and more (the arena's): camelid must take them all.
    store = tempfile.mkdtemp()
    the_run_command_serves(svc_task, sys.argv[1], arena_db=f"sqlite:{store}/arena.db")
    if failures:
        print(f"{len(failures)} checks failed", file=sys.stderr)
        sys.exit(1)


main()
