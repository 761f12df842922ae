"""DDP with two CPU processes (gloo, launched by torchrun) ends with identical parameters on both ranks; two nodes
meet through a c10d rendezvous; another world size resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from t2v_train import load_experiment
from t2v_train.checkpoint import tensors_of
from t2v_train.distributed import init_distributed, shutdown
from t2v_train.trainer import Trainer

exp = load_experiment(None, raw=json.loads(sys.argv[1]))
d, device = init_distributed("cpu")
trainer = Trainer(exp, d, device, progress=False)
first = {k: v.clone() for k, v in tensors_of(trainer.model).items()}
trainer.run()
save_file(first, f"{sys.argv[2]}/init-rank{d.rank}.safetensors")
save_file(tensors_of(trainer.model), f"{sys.argv[2]}/final-rank{d.rank}.safetensors")
save_file(tensors_of(trainer.ema.model), f"{sys.argv[2]}/ema-rank{d.rank}.safetensors")
shutdown(d)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_end_with_identical_parameters(shards, tiny_raw, tmp_path):
    # a fresh run over an old one: rank 0 alone moves the old outputs aside, once
    raw = tiny_raw(shards, tmp_path / "ddp", steps=6, grad_accum=2, checkpoint_every=3, log_every=1, resume="never")
    old = tmp_path / "ddp" / "checkpoints" / "step-000009"
    old.mkdir(parents=True)
    (old / "state.json").write_text('{"step": 9}')
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(script), json.dumps(raw), str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    init = [load_file(str(tmp_path / f"init-rank{r}.safetensors")) for r in (0, 1)]
    final = [load_file(str(tmp_path / f"final-rank{r}.safetensors")) for r in (0, 1)]
    ema = [load_file(str(tmp_path / f"ema-rank{r}.safetensors")) for r in (0, 1)]
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
        assert torch.equal(ema[0][name], ema[1][name]), name
    assert any(not torch.equal(init[0][n], final[0][n]) for n in final[0])  # it trained
    # both ranks saved their RNG state into the shared checkpoint; rank 0 logged the averaged loss
    ckpt = tmp_path / "ddp" / "checkpoints" / "step-000006"
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 2 and state["micro_batches"] == 12
    (aside,) = (tmp_path / "ddp").glob("replaced-*")
    assert (aside / "checkpoints" / "step-000009" / "state.json").read_text() == '{"step": 9}'
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step-000003", "step-000006"]


def test_ranks_read_disjoint_samples(shards):
    from t2v_data.shards import Manifest
    from t2v_train.data import TrainStream

    manifest = Manifest.read(shards)
    keys = []
    for rank in (0, 1):
        stream = TrainStream(manifest, batch_size=1, seed=0, rank=rank, world_size=2, shuffle_buffer=8)
        keys.append([s["key"] for s, _ in zip(stream.samples(rank, 2), range(24))])
    assert len(set(keys[0])) == 24 and len(set(keys[1])) == 24  # one epoch each: every sample once
    assert not set(keys[0]) & set(keys[1])


def test_two_nodes_by_c10d_rendezvous_then_a_resume_on_one_process(shards, tiny_raw, tmp_path):
    # two "nodes" on localhost, each a torchrun agent with one process, meeting through a c10d rendezvous, as on a
    # cluster (docs/training.md); then the run goes on in a single process: another world size resumes, with a warning
    out = tmp_path / "run"
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_raw(shards, out, steps=4, checkpoint_every=2)))
    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend",
           "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "t2v-test", "--max-restarts", "0",
           str(root / "pipelines" / "train.py"), "--config", str(config), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        results = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], [r[1][-2000:] for r in results]
    assert sum("trained to step 4" in r[0] for r in results) == 1  # rank 0 reports, on whichever node it is
    ckpt = out / "checkpoints" / "step-000004"
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    resumed = subprocess.run([sys.executable, str(root / "pipelines" / "train.py"), "--config", str(config), "--quiet",
                              "train.steps=6"], capture_output=True, text=True, timeout=240, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "batch/worker/world settings changed; the data order will differ" in resumed.stdout
    assert "trained to step 6" in resumed.stdout
