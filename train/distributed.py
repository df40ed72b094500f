"""Data-parallel training under torchrun: the process group, which rank does what, and the batch shards.

    torchrun --nproc_per_node 2 -m train --data data/snips --out runs/snips-ddp ...
    torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m train ...

Plain `python -m train` (no WORLD_SIZE in the environment) runs as one process, exactly as before. Under
torchrun every rank builds the same model from the same seed and walks the same batch orders; each takes its
share of every global batch (--batch-size stays the global batch), DistributedDataParallel averages the
gradients, and rank 0 alone evaluates (over the whole split, every example once) and writes checkpoints,
metrics, TensorBoard and plots. gloo on CPU, NCCL on GPU.
"""
import dataclasses
import datetime
import logging
import os

import torch

from textclf.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self):
        return self.world > 1

    @property
    def main(self):
        return self.rank == 0


def from_environment():
    """The ranks torchrun describes in the environment (one process when it describes none)."""
    try:
        values = [int(os.environ.get(k, default)) for k, default in
                  (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))]
    except ValueError:
        raise DataError("environment", None, "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers: "
                        "launch with torchrun") from None
    ranks = Ranks(*values)
    if not (0 <= ranks.rank < ranks.world and 0 <= ranks.local_rank < ranks.local_world <= ranks.world):
        raise DataError("environment", None, f"rank {ranks.rank} of {ranks.world} (local {ranks.local_rank} of "
                        f"{ranks.local_world}) is not a valid launch: use torchrun")
    return ranks


def start(ranks, device, timeout_s):
    """Join the process group (gloo on CPU, NCCL on CUDA); a rank whose peers do not all arrive within
    timeout_s stops with an error instead of waiting for ever."""
    if not ranks.distributed:
        return
    import torch.distributed as dist
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        dist.barrier()
    except (RuntimeError, ValueError, OSError) as e:   # torch raises DistStoreError (a RuntimeError) on timeouts
        raise DataError("torchrun", None, f"rank {ranks.rank} of {ranks.world}: the {backend} process group did not "
                        f"form within {timeout_s:g} s ({type(e).__name__}): launch every rank with the same "
                        "torchrun --nnodes/--nproc_per_node and rendezvous endpoint") from None
    log.info("rank %d of %d (local %d of %d) joined the %s group", ranks.rank, ranks.world, ranks.local_rank,
             ranks.local_world, backend)


def stop(ranks):
    if ranks.distributed:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(name, ranks):
    """cuda:LOCAL_RANK for each rank on a GPU machine; the CPU otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def threads_for(requested, ranks):
    """Torch threads per rank: as asked, or the cores split among the ranks of this machine."""
    if requested:
        return requested
    if ranks.distributed:
        return max(1, len(os.sched_getaffinity(0)) // ranks.local_world)
    return 0


def shard(batch, ranks):
    """This rank's share of one global batch (every world-th example); [] never reaches the model: batches
    smaller than the world are dropped by usable()."""
    return batch[ranks.rank::ranks.world]


def usable(batch, ranks):
    """A global batch every rank gets at least one example of (only a last, tiny batch can fall short)."""
    return len(batch) >= ranks.world


def broadcast_flag(value, ranks, device):
    """Rank 0's boolean, on every rank (e.g. "stop early")."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist
    flag = torch.tensor([1 if value else 0], device=device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def barrier(ranks):
    if ranks.distributed:
        import torch.distributed as dist
        dist.barrier()


def same_weights(model, ranks, device):
    """True when every rank holds the same parameters (a checksum of each, gathered)."""
    if not ranks.distributed:
        return True
    import torch.distributed as dist
    with torch.no_grad():
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i, p in enumerate(model.parameters()):
            total[0] += p.double().sum()
            total[1] += (p.double().flatten()[:: max(1, p.numel() // 97)] * (i + 1)).sum()
    gathered = [torch.zeros_like(total) for _ in range(ranks.world)]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)
