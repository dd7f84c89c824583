"""Worker start-up refuses configurations it cannot honour, saying what to change."""
from __future__ import annotations

import subprocess
import sys


def test_lru_slots_larger_than_the_pool_are_refused_with_a_fix(tiny_assets):
    r = subprocess.run([sys.executable, "-m", "gpu_worker.main", "--model", str(tiny_assets["model"]),
                        "--store", "127.0.0.1:1", "--cache-policy", "lru", "--lru-slots", "64",
                        "--lru-max-rank", "256", "--block-size", "4", "--pool-memory-bytes", str(1 << 20)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "lower --lru-slots or --lru-max-rank" in r.stderr, r.stderr[-2000:]


def test_unknown_cache_policy_is_a_usage_error(tiny_assets):
    r = subprocess.run([sys.executable, "-m", "gpu_worker.main", "--model", str(tiny_assets["model"]),
                        "--store", "127.0.0.1:1", "--cache-policy", "mru"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown --cache-policy 'mru'" in r.stderr, r.stderr[-2000:]


def test_triton_backend_without_cuda_or_interpreter_is_refused_with_a_fix(tiny_assets):
    import os

    import torch
    if torch.cuda.is_available():
        return  # there the kernels compile; nothing to refuse
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "gpu_worker.main", "--model", str(tiny_assets["model"]),
                        "--store", "127.0.0.1:1", "--lora-backend", "triton"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0
    assert "needs a CUDA device, or TRITON_INTERPRET=1" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "gpu_worker.main", "--model", str(tiny_assets["model"]),
                        "--store", "127.0.0.1:1", "--lora-backend", "cutlass"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "unknown --lora-backend 'cutlass'" in r.stderr, r.stderr[-2000:]


def test_sim_profile_workers_need_no_model_and_check_their_flags():
    import pytest

    from gpu_worker.main import WorkerConfig

    cfg = WorkerConfig(model=None, store="h:1", sim_profile="a40-llama7b", admission="slora-peak",
                       max_step_tokens=1024)
    assert cfg.model is None and cfg.sim_profile == "a40-llama7b"
    with pytest.raises(ValueError, match="--model is required"):
        WorkerConfig(model=None, store="h:1")
    with pytest.raises(ValueError, match="unknown device profile 'z80'"):
        WorkerConfig(model=None, store="h:1", sim_profile="z80")
    with pytest.raises(ValueError, match="unknown --admission"):
        WorkerConfig(model=None, store="h:1", sim_profile="a40-llama7b", admission="greedy")
    r = subprocess.run([sys.executable, "-m", "gpu_worker.main", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert "--sim-profile" in r.stdout and "MODEL the device" in r.stdout
