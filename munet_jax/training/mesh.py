"""Device mesh, shardings and multi-host set-up for data-parallel training.

One code path for 1 CPU, 8 GPUs or a TPU pod: a 1-D `Mesh` over every device of
every process with the axis `data`. The batch is split along its first axis over
`data`; parameters and optimizer state are replicated (the model is small enough
that every device holds a copy, as in the paper's single-GPU training). `jax.jit`
with these shardings lets XLA insert the gradient all-reduce.

Multi-host: `initialize_distributed` must run before anything touches a device.
Each process then feeds only its own slice of the global batch, and
`jax.make_array_from_process_local_data` stitches the slices into one global array.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several": JAX's cluster
# auto-detection reads them (SLURM, Open MPI, Cloud TPU multi-worker, explicit JAX_*).
_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")
_initialized = False


def _multiworker_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def _in_cluster() -> bool:
    if os.environ.get("SLURM_JOB_ID"):
        # One task per node is our SLURM launch; a plain `salloc` shell with one task is not multi-host.
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if os.environ.get("TPU_WORKER_HOSTNAMES"):
        return _multiworker_tpu()
    return bool(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize_distributed(cfg) -> bool:
    """Calls `jax.distributed.initialize` when `cfg.mode` asks for it; returns whether it did.

    cfg: the `distributed` config subtree.
      mode 'auto'   initialise when a cluster environment is detected (SLURM with more
                    than one task, a multi-worker Cloud TPU, Open MPI, JAX_COORDINATOR_ADDRESS);
           'always' initialise (arguments below, or JAX's auto-detection where None);
           'never'  single process.
      coordinator_address / num_processes / process_id: explicit values (None: detect).
      cpu_collectives: 'gloo' makes multi-process runs work on CPU-only hosts (tests).
    """
    global _initialized
    if _initialized:
        return True
    if cfg.mode not in ("auto", "always", "never"):
        raise ValueError(f"distributed.mode={cfg.mode!r}: choose 'auto', 'always' or 'never'")
    if cfg.mode == "never" or (cfg.mode == "auto" and not _in_cluster() and cfg.coordinator_address is None):
        return False
    if cfg.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs = {
        name: cfg[name]
        for name in ("coordinator_address", "num_processes", "process_id")
        if cfg[name] is not None
    }
    logging.info("jax.distributed.initialize(%s)", kwargs or "auto-detect")
    jax.distributed.initialize(**kwargs)
    _initialized = True
    return True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of the global batch; errors name the fix."""
    num_devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % num_devices:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} must be a positive multiple of the number of "
            f"devices ({num_devices}); set e.g. --config.train.global_batch_size={num_devices * max(1, global_batch_size // num_devices)}"
        )
    return global_batch_size // jax.process_count()


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict[str, jax.Array]:
    """This process's numpy slice of every field -> global arrays sharded over `data`.

    local[name] has shape [global_batch_size / process_count, ...]; process i holds
    rows [i * b, (i + 1) * b) of the global batch (the input pipeline's contract).
    """
    sharding = batch_sharded(mesh)
    out = {}
    for name, value in local.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(sharding, value, (global_batch_size,) + value.shape[1:])
    return out


def replicate(tree, mesh: Mesh):
    """Host values (identical on every process) -> arrays replicated over the mesh."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree
    )
