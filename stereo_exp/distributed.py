"""One object that describes the distributed setup, resolved once from the environment.

Four ways to start a run, checked in this order (nothing is nested: the first that applies wins):

* torchrun (or any launcher that exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``);
* the tasks of a job of ``hydra/launcher=local`` (``tasks_per_node`` > 1): submitit's local controller starts one
  process per task on this machine and exports ``SUBMITIT_LOCAL_GLOBALID``/``SUBMITIT_LOCAL_NTASKS``/
  ``SUBMITIT_LOCAL_LOCALID``; the rendezvous is 127.0.0.1 and a port derived from the job id (the controller's pid);
* SLURM tasks: ``srun`` or submitit start one process per task and export ``SLURM_PROCID``/``SLURM_NTASKS``/
  ``SLURM_LOCALID``; the rendezvous address is the job's first node and the port is derived from the job id, so
  every task computes the same values without talking to the others;
* a single process.

Other code asks this object (``dist.is_main``, ``dist.world_size``) instead of reading environment variables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist

# A gloo group for the small collectives the host decides on (stop-signal flags) when the main backend is NCCL: an
# NCCL collective read on the host waits for every kernel queued before it, i.e. it would sync every step.
_CONTROL_GROUP: Any = None

# Port range for the rendezvous of SLURM and local submitit jobs: the job id picks a port in [base, base + span) so
# concurrent jobs on a shared node rarely collide, and every task of one job agrees on it without communicating.
_JOB_PORT_BASE = 20000
_JOB_PORT_SPAN = 20000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Rank, world size and device of this process; ``backend`` is None for a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    source: str = "single"  # torchrun | submitit-local | slurm | single
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, checkpoints and MLflow records."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> DistEnv:
        """Resolve rank/world size from torchrun or SLURM variables; ``device`` is auto | cpu | cuda."""
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", "0"))
            local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
            source = "torchrun"
            master_addr, master_port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
            port = int(master_port) if master_port else None
        elif env.get("SUBMITIT_EXECUTOR") == "local":
            # Before SLURM's variables: a local sweep submitted from inside a SLURM job step inherits them.
            world_size = int(env.get("SUBMITIT_LOCAL_NTASKS", "1"))
            if world_size == 1:
                return cls(device=_pick_device(device, 0))
            rank, local_rank = int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env["SUBMITIT_LOCAL_LOCALID"])
            local_world_size, source = world_size, "submitit-local"
            master_addr, port = "127.0.0.1", _job_port(env["SUBMITIT_LOCAL_JOB_ID"])
        elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
            # Inside a job step (srun / submitit task): one process per task. Outside a step (the batch
            # script itself) SLURM_STEP_ID is unset and we stay a single process.
            rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
            local_rank = int(env.get("SLURM_LOCALID", "0"))
            local_world_size = _slurm_tasks_on_this_node(env, world_size)
            source = "slurm"
            master_addr = env.get("MASTER_ADDR") or _first_slurm_host(env)
            port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else _job_port(env.get("SLURM_JOB_ID", "0"))
        else:
            return cls(device=_pick_device(device, 0))

        dev = _pick_device(device, local_rank)
        return cls(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            device=dev,
            backend="nccl" if dev.type == "cuda" else "gloo",
            source=source,
            master_addr=master_addr,
            master_port=port,
        )

    def init_process_group(self) -> None:
        """Join the process group (no-op for a single process or when already initialised)."""
        if not self.is_distributed or torch_dist.is_initialized():
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # torch's env:// rendezvous reads these; SLURM does not set them, so export what we resolved.
        os.environ.setdefault("MASTER_ADDR", self.master_addr or "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(self.master_port or 29500))
        torch_dist.init_process_group(
            backend=self.backend, store=_torchrun_attempt_store(), rank=self.rank, world_size=self.world_size
        )
        # One line per rank (before other ranks' logs are quieted): where each process runs and whom it met, the
        # first thing to read when a multi-node job hangs or trains on the wrong number of processes.
        address = os.environ["MASTER_ADDR"]
        log.info(
            "DDP: rank %d of %d (local rank %d of %d) on host %s joined the %s process group at %s:%s (%s; from %s)",
            self.rank,
            self.world_size,
            self.local_rank,
            self.local_world_size,
            socket.gethostname(),
            self.backend,
            address,
            os.environ["MASTER_PORT"],
            _resolve(address),
            self.source,
        )
        global _CONTROL_GROUP
        _CONTROL_GROUP = torch_dist.new_group(backend="gloo") if self.backend != "gloo" else None  # None: the world

    def barrier(self) -> None:
        if self.is_distributed and torch_dist.is_initialized():
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (identity for one process) and return it."""
        if self.is_distributed and torch_dist.is_initialized():
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def any_rank_each(self, flags: Sequence[bool]) -> list[bool]:
        """Flag i is true when it is true on at least one rank (one collective, on the host through gloo: it never
        waits for the GPU)."""
        if not (self.is_distributed and torch_dist.is_initialized()):
            return list(flags)
        values = torch.tensor([1.0 if flag else 0.0 for flag in flags])
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.MAX, group=_CONTROL_GROUP)
        return [bool(v > 0) for v in values.tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a collective; identity for one process)."""
        if not (self.is_distributed and torch_dist.is_initialized()):
            return obj
        holder = [obj]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def destroy(self) -> None:
        global _CONTROL_GROUP
        _CONTROL_GROUP = None
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def record_launcher_error(message: str) -> None:
    """Under torchrun, hand ``message`` to the launcher, which prints it in its failure summary (the last lines
    on the terminal) instead of "To enable traceback see ..."."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as file:
            json.dump({"message": message, "timestamp": int(time.time())}, file)


def _torchrun_attempt_store() -> torch_dist.Store | None:
    """The store a worker of torchrun meets the others in: torchrun's own (its agent's), seen under a prefix of
    this attempt (``TORCHELASTIC_RESTART_COUNT``); None outside torchrun (env:// then makes one, or SLURM's rank 0).

    torch's env:// joins torchrun's store as it is, and torchrun keeps that store across the restarts of
    ``--max-restarts``: the ranks of a restart then found the addresses the ranks they replace had written there,
    and a rank that read them before its peer wrote anew failed ("Gloo connectFullMesh failed ... Connection
    refused") and used up the restart (1 restart in 2 here, with torch 2.14)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent_store = torch_dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        int(env["WORLD_SIZE"]),
        is_master=False,
        timeout=torch_dist.constants.default_pg_timeout,
    )
    return torch_dist.PrefixStore(f"stereo_exp/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda; got {preference!r}.")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch.cuda.is_available() is False on this machine.")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def _first_slurm_host(env: os._Environ[str] | dict[str, str]) -> str:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # "node[01-04,07]" -> "node01" without scontrol (e.g. inside a container lacking SLURM's tools)
        match = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
        return (match.group(1) + (match.group(2) or "")) if match else "127.0.0.1"


def _job_port(job_id: str) -> int:
    """The rendezvous port every task of job ``job_id`` computes alone (its digits; SLURM's array ids have a "_")."""
    return _JOB_PORT_BASE + int(re.sub(r"\D", "", job_id) or 0) % _JOB_PORT_SPAN


def _slurm_tasks_on_this_node(env: os._Environ[str] | dict[str, str], world_size: int) -> int:
    """The tasks of this step on this node: entry SLURM_NODEID of the per-node counts, which SLURM writes as
    "4(x2)" (4 on each of 2 nodes) or "2,1" (2 on the first node, 1 on the second)."""
    per_node = (
        env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE", "")
    )
    counts = []
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", per_node):
        counts += [int(count)] * int(repeat or 1)
    if not counts:
        return world_size
    return counts[min(int(env.get("SLURM_NODEID", "0")), len(counts) - 1)]


def _resolve(host: str) -> str:
    """The IPv4 address ``host`` resolves to here, or why it does not (for the log line of the rendezvous)."""
    try:
        return socket.gethostbyname(host)
    except OSError as error:
        return f"does not resolve: {error}"
