"""Several processes, on one machine or several, working as one through `jax.distributed`.

A `DistributedConfig` names the coordinator and this process's place among the others, or asks
for them from a cluster's environment ("auto"); `start_distributed` joins the processes before
any other JAX call. One process (the default) needs neither.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxmosaic.config import ConfigError, setting, whole

__all__ = ["DistributedConfig", "start_distributed"]

_TOGETHER = "--coordinator, --num-processes and --process-id go together, or --coordinator auto on a cluster"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Which processes share the work: none given (one process), "auto" (from a cluster's
    environment), or the coordinator, the number of processes and this one's id, all three."""

    coordinator: str | None = setting(None, "Several processes: the coordinator's HOST:PORT (jax.distributed), or 'auto' for a cluster's environment.")
    num_processes: int | None = setting(None, "Several processes: how many.")
    process_id: int | None = setting(None, "Several processes: this one's id, 0 to num-processes - 1.")

    def __post_init__(self):
        if self.num_processes is not None:
            whole("num_processes", self.num_processes, minimum=1)
        if self.process_id is not None:
            whole("process_id", self.process_id, minimum=0)
        if not self.active or self.coordinator == "auto":
            return
        for name in ("coordinator", "num_processes", "process_id"):
            if getattr(self, name) is None:
                raise ConfigError(name, f"missing ({_TOGETHER})")
        if self.process_id >= self.num_processes:
            raise ConfigError("process_id", f"must be below --num-processes ({self.num_processes}), got {self.process_id}")
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("coordinator", f"expected HOST:PORT or auto, got {self.coordinator!r}")

    @property
    def active(self) -> bool:
        """Whether several processes are asked for."""
        return self.coordinator is not None or self.num_processes is not None or self.process_id is not None


def start_distributed(config: DistributedConfig) -> None:
    """Join the processes `config` names (`jax.distributed.initialize`, from a cluster's
    environment for "auto"); nothing for one process. Call it before JAX computes anything."""
    if not config.active:
        return
    if config.coordinator == "auto":
        jax.distributed.initialize()
        return
    jax.distributed.initialize(config.coordinator, num_processes=config.num_processes, process_id=config.process_id)
