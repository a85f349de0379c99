"""The training-run part of the schema: optimizer, device mesh, the training loop and sweep guards."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sftjax.config.base import require


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay (optax)."""

    name: str = "adamw"
    lr: float = 3e-4
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # not applied to norms and biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables

    def validate(self) -> None:
        require(self.name == "adamw", "optim.name", "'adamw'", self.name)
        require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "a positive finite number", self.lr)
        require(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        require(self.weight_decay >= 0, "optim.weight_decay", "a number >= 0", self.weight_decay)
        require(0 <= self.b1 < 1, "optim.b1", "a number in [0, 1)", self.b1)
        require(0 <= self.b2 < 1, "optim.b2", "a number in [0, 1)", self.b2)
        require(self.eps > 0, "optim.eps", "a positive number", self.eps)
        require(self.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0 disables clipping)", self.grad_clip)


@dataclass
class MeshConfig:
    """Device mesh (data, fsdp, tensor) and multi-process setup.

    One of data/fsdp/tensor may be -1: it takes all devices the others leave.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-process: set coordinator ("host:port"), num_processes and process_id, or the environment variables
    # SFTJAX_COORDINATOR / SFTJAX_NUM_PROCESSES / SFTJAX_PROCESS_ID; auto=true lets jax detect TPU pods and SLURM.
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False

    def validate(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for key, value in sizes.items():
            require(value == -1 or value >= 1, f"mesh.{key}", "a positive integer or -1 (fill)", value)
        require(
            sum(v == -1 for v in sizes.values()) <= 1,
            "mesh",
            "at most one of data/fsdp/tensor set to -1",
            sizes,
        )
        require(self.num_processes >= 1, "mesh.num_processes", "a positive integer", self.num_processes)
        require(
            0 <= self.process_id < self.num_processes,
            "mesh.process_id",
            f"an integer in [0, {self.num_processes})",
            self.process_id,
        )

    def resolve(self, device_count: int) -> tuple[int, int, int]:
        """Mesh shape for ``device_count`` devices; fails before compilation when the product does not match."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            require(
                device_count % known == 0,
                "mesh",
                f"data*fsdp*tensor to divide the device count {device_count}",
                {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor},
            )
            sizes[sizes.index(-1)] = device_count // known
        require(
            math.prod(sizes) == device_count,
            "mesh",
            f"data*fsdp*tensor == device count {device_count}",
            {"data": sizes[0], "fsdp": sizes[1], "tensor": sizes[2]},
        )
        return sizes[0], sizes[1], sizes[2]


@dataclass
class TrainConfig:
    max_steps: int = -1  # -1: as long as the data stages say; otherwise a cap on the whole run
    seed: int = 0
    global_batch_size: int = 8  # rows of data.seq_len per optimizer step, over all devices and micro-batches
    grad_accum: int = 1
    log_every: int = 10
    # Checkpoints (Orbax, async) go to RUN_DIR/checkpoints every save_every steps (0: only at the end and on
    # SIGTERM/SIGINT); the last keep_last are kept, plus the keep_best best by best_metric (a metrics.jsonl key).
    save_every: int = 0
    keep_last: int = 2
    keep_best: int = 0
    best_metric: str = "loss"
    best_mode: str = "min"
    async_checkpointing: bool = True
    export_hf: bool = False  # write RUN_DIR/hf (Hugging Face format) at the end
    export_dtype: str = "float32"
    # Peak FLOP/s of one device for MFU. The default is the XLA fp32 matmul peak measured on the 2-core CPU we
    # develop on (bench/matmul_peak.py: 216 GFLOP/s); pass your accelerator's number (e.g. 989e12 for H100 bf16).
    peak_flops_per_device: float = 2.2e11
    progress: bool = True  # tqdm bar
    tensorboard: bool = True

    def validate(self) -> None:
        require(self.max_steps >= 1 or self.max_steps == -1, "train.max_steps",
                 "a positive integer, or -1 (the data stages' own length)", self.max_steps)
        require(self.global_batch_size >= 1, "train.global_batch_size", "a positive integer",
                 self.global_batch_size)
        require(self.grad_accum >= 1, "train.grad_accum", "a positive integer", self.grad_accum)
        require(
            self.global_batch_size % self.grad_accum == 0,
            "train.grad_accum",
            f"a divisor of train.global_batch_size ({self.global_batch_size})",
            self.grad_accum,
        )
        require(self.log_every >= 1, "train.log_every", "a positive integer", self.log_every)
        require(self.save_every >= 0, "train.save_every", "an integer >= 0", self.save_every)
        require(self.keep_last >= 1, "train.keep_last", "a positive integer", self.keep_last)
        require(self.keep_best >= 0, "train.keep_best", "an integer >= 0", self.keep_best)
        require(self.best_mode in ("min", "max"), "train.best_mode", "'min' or 'max'", self.best_mode)
        require(self.export_dtype in ("float32", "bfloat16", "float16"), "train.export_dtype",
                 "float32, bfloat16 or float16", self.export_dtype)
        require(self.peak_flops_per_device > 0, "train.peak_flops_per_device", "a positive number",
                 self.peak_flops_per_device)


@dataclass
class SweepConfig:
    """Guards for `sftjax-train -m` (sftjax.sweep): the grid is counted before anything launches."""

    max_jobs: int = 64
    confirm: bool = False  # launch a grid larger than max_jobs
