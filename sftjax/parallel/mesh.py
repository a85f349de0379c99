"""Mesh construction and multi-process initialization."""

from __future__ import annotations

import os

import jax
from jax.sharding import AxisType, Mesh

from sftjax.config import ConfigError, MeshConfig
from sftjax.parallel.rules import MESH_AXES


def initialize_distributed(cfg: MeshConfig) -> None:
    """Start jax.distributed when the run spans several processes; a no-op for one process.

    Sources, in order: config (mesh.coordinator/num_processes/process_id), environment variables
    SFTJAX_COORDINATOR/SFTJAX_NUM_PROCESSES/SFTJAX_PROCESS_ID, or mesh.auto=true to let jax detect TPU pods/SLURM.
    """
    coordinator = cfg.coordinator or os.environ.get("SFTJAX_COORDINATOR", "")
    num_processes = int(os.environ.get("SFTJAX_NUM_PROCESSES", cfg.num_processes))
    process_id = int(os.environ.get("SFTJAX_PROCESS_ID", cfg.process_id))
    if jax.distributed.is_initialized():
        return
    if cfg.auto:
        jax.distributed.initialize()
        return
    if num_processes <= 1:
        tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
        if tasks > 1 and "SLURM_PROCID" in os.environ:
            # srun started several tasks but none knows of the others: each would train alone into one run_dir
            raise ConfigError(f"config key 'mesh.auto': this is task {os.environ['SLURM_PROCID']} of {tasks} SLURM "
                              "tasks, but the run is configured for one process; set mesh.auto=true (or the "
                              "SFTJAX_* variables, as launch/slurm.sbatch does)")
        return
    if not coordinator:
        raise ConfigError(
            f"config key 'mesh.coordinator': expected 'host:port' for a {num_processes}-process run, got ''"
        )
    # Only affects the CPU backend (collectives across processes); must be set before any backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def make_mesh(shape: tuple[int, int, int], devices=None) -> Mesh:
    """(data, fsdp, tensor) mesh over all devices, or over ``devices`` (e.g. one device of many in tests).

    Auto axis types: the compiler propagates shardings from our explicit in/out shardings and constraints.
    """
    kwargs = {} if devices is None else {"devices": devices}
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), **kwargs)
