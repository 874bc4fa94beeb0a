"""Several processes, on one machine or several, working as one through `jax.distributed`.

A `DistributedConfig` names the coordinator and this process's place among the others, or asks
for them from a cluster's environment ("auto"); `start_distributed` joins the processes before
any other JAX call. One process (the default) needs neither.

Joining waits at most `timeout` seconds and then names what did not arrive: the coordinator does
not answer, not every process joined, or the coordinator's port is taken (a second process 0).
JAX ends a process from inside its C++ client when a join fails at JAX's own deadline, so the join
runs in a thread with a later deadline, and a process whose join did not finish leaves at exit
without JAX's teardown, which would wait on that thread.

Once joined, every step a process may fail on alone runs inside `agree`: at its end the processes
exchange whether each succeeded and a digest of the settings each was given, so that one process's
failure stops all of them with one line naming it, and processes given different settings are
refused before any work, instead of waiting on a collective that the failed process never joins.
A process killed outright cannot take part: the exchange then fails (at once once the processes
have exchanged before, else after JAX's 30 s), and the others leave as after a failed join;
unless JAX's heartbeat timeout (100 s) ends them first, from inside its client, with its own message.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from jaxmosaic.config import ConfigError, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import first_line

__all__ = ["DistributedConfig", "DistributedError", "agree", "start_distributed"]

_TOGETHER = "--coordinator, --num-processes and --process-id go together, or --coordinator auto on a cluster"
_CLUSTER_VARIABLES = ("JAX_COORDINATOR_ADDRESS; SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and "
                      "SLURM_LOCALID (Slurm); OMPI_MCA_orte_hnp_uri (Open MPI's mpirun); TPU_WORKER_HOSTNAMES or "
                      "TPU_PROCESS_ADDRESSES (Cloud TPU on GKE); KUBERNETES_SERVICE_HOST (Kubernetes)")
_JAX_GRACE = 60  # seconds JAX's own join deadline lies beyond ours, so that ours always ends the wait first
_PROBE_SECONDS = 2.0  # how long one connection to the coordinator is tried while waiting
_POLL_SECONDS = 1.0  # between two such tries
_RECORD_BYTES = 8192  # what each process sends when they agree: its failure (one line) and its settings' digests
_LINE_CHARACTERS = 1000


class DistributedError(JaxmosaicError):
    """The processes did not join, or do not agree: one line naming the process and the reason."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Which processes share the work: none given (one process), "auto" (from a cluster's
    environment), or the coordinator, the number of processes and this one's id, all three."""

    coordinator: str | None = setting(None, "Several processes: the coordinator's HOST:PORT (jax.distributed), or 'auto' for a cluster's environment.")
    num_processes: int | None = setting(None, "Several processes: how many.")
    process_id: int | None = setting(None, "Several processes: this one's id, 0 to num-processes - 1.")
    timeout: int = setting(120, "Several processes: seconds to wait for all of them to join; then one line says what did not arrive.")

    def __post_init__(self):
        if self.num_processes is not None:
            whole("num_processes", self.num_processes, minimum=1)
        if self.process_id is not None:
            whole("process_id", self.process_id, minimum=0)
        whole("timeout", self.timeout, minimum=1, maximum=86400)
        if not self.active or self.coordinator == "auto":
            return
        for name in ("coordinator", "num_processes", "process_id"):
            if getattr(self, name) is None:
                raise ConfigError(name, f"missing ({_TOGETHER})")
        if self.process_id >= self.num_processes:
            raise ConfigError("process_id", f"must be below --num-processes ({self.num_processes}), got {self.process_id}")
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("coordinator", f"expected HOST:PORT or auto, got {self.coordinator!r}")

    @property
    def active(self) -> bool:
        """Whether several processes are asked for."""
        return self.coordinator is not None or self.num_processes is not None or self.process_id is not None


def start_distributed(config: DistributedConfig, *, say: Callable[[str], None] = lambda line: None) -> None:
    """Join the processes `config` names (`jax.distributed.initialize`, from a cluster's
    environment for "auto"); nothing for one process. Call it before JAX computes anything.

    `say` gets one line before the join (the coordinator, this process's id, the process count).
    A join that has not finished after `config.timeout` seconds raises `DistributedError` naming
    what did not arrive; the process then leaves at exit with status 1, skipping JAX's teardown.
    """
    if not config.active:
        return
    if config.coordinator == "auto":
        say(f"joining the processes this cluster's environment names (--coordinator auto), for at most {config.timeout} s")
        _join(config, {})
        return
    say(f"process {config.process_id} of {config.num_processes}: joining the coordinator {config.coordinator}, "
        f"for at most {config.timeout} s")
    if config.process_id == 0:
        _check_port_free(config.coordinator)
    _join(config, {"coordinator_address": config.coordinator, "num_processes": config.num_processes,
                   "process_id": config.process_id})


def _host_port(coordinator: str) -> tuple[str, int]:
    host, _, port = coordinator.rpartition(":")
    return host.strip("[]"), int(port)


def _check_port_free(coordinator: str) -> None:
    """Process 0 serves the coordinator on its port, on every address of this machine; JAX crashes
    when that port is taken, so it is tried first."""
    _, port = _host_port(coordinator)
    dual = socket.has_dualstack_ipv6()
    try:
        with socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual):
            pass
    except OSError as err:
        raise DistributedError(f"--coordinator {coordinator}: port {port} cannot be served on this machine "
                               f"({os.strerror(err.errno) if err.errno else err}); another process may already be "
                               "--process-id 0: give each process its own --process-id, or choose a free port") from None


def _join(config: DistributedConfig, where: dict) -> None:
    failures: list[Exception] = []

    def join():
        try:
            jax.distributed.initialize(**where, initialization_timeout=config.timeout + _JAX_GRACE)
        except Exception as err:  # noqa: BLE001 - handed to the waiting thread, which names it
            failures.append(err)

    thread = threading.Thread(target=join, name="jax.distributed.initialize", daemon=True)
    thread.start()
    # whether the coordinator ever answered: probed while waiting, since it may give up before this process does
    answered, unanswered = config.coordinator == "auto" or config.process_id == 0, None
    deadline = time.monotonic() + config.timeout
    while thread.is_alive() and time.monotonic() < deadline:
        if not answered:
            unanswered = _unanswered(config.coordinator, within=max(0.1, min(_PROBE_SECONDS, deadline - time.monotonic())))
            answered = unanswered is None
        thread.join(max(0.0, min(_POLL_SECONDS, deadline - time.monotonic())))
    if thread.is_alive():
        atexit.register(_leave_now)
        raise DistributedError(_not_joined(config, unanswered))
    if failures:
        raise DistributedError(_join_failure(config, failures[0]))


def _leave_now(code: int = 1) -> None:
    """End the process at once with status `code`: JAX's teardown would wait for, or abort in, the
    join or collective still running."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _unanswered(coordinator: str, *, within: float) -> str | None:
    """Why nothing answers at the coordinator's address within `within` seconds, or None when something does."""
    try:
        with socket.create_connection(_host_port(coordinator), timeout=within):
            return None
    except socket.gaierror:
        return "unknown host"
    except TimeoutError:
        return "no answer"
    except OSError as err:
        return (err.strerror or type(err).__name__).lower()


def _not_joined(config: DistributedConfig, unanswered: str | None) -> str:
    """What did not arrive: the coordinator, which never answered (`unanswered` says why), or a process."""
    if config.coordinator == "auto":
        return f"--timeout {config.timeout}: the processes of this cluster did not all join in {config.timeout} s"
    if unanswered is not None:
        return (f"--coordinator {config.coordinator}: nothing answers there after {config.timeout} s (--timeout; "
                f"{unanswered}); start the process with --process-id 0 on that host first, or correct --coordinator")
    return (f"--timeout {config.timeout}: not every one of the {config.num_processes} processes joined "
            f"{config.coordinator} in {config.timeout} s (this is process {config.process_id}); start one process for "
            f"each --process-id from 0 to {config.num_processes - 1}, each id once, with the same --coordinator and "
            "--num-processes")


def _join_failure(config: DistributedConfig, error: Exception) -> str:
    reason = _first_line(error)
    if config.coordinator == "auto" and isinstance(error, ValueError):
        return (f"--coordinator auto: no cluster found in this process's environment ({reason.rstrip('.')}); looked for "
                f"{_CLUSTER_VARIABLES}; otherwise give --coordinator HOST:PORT, --num-processes and --process-id")
    return f"--coordinator {config.coordinator}: cannot join ({reason})"


def _first_line(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    line = first_line(error)  # as the command line says it
    if not isinstance(error, (JaxmosaicError, OSError, ValueError)):
        line = f"{type(error).__name__}: {line}"
    return line[:_LINE_CHARACTERS]


@contextlib.contextmanager
def agree(*, on_failure: str = "every process stopped", cleanup: Callable[[], None] | None = None,
          say: Callable[[str], None] = lambda line: None) -> Iterator[dict]:
    """Run a block on every process, then go on only if every process succeeded and all were
    given the same settings. One process: the block runs as it is.

    The block gets a dict to fill with the settings every process must share (name -> any JSON
    value); they are compared by digest. At the block's end the processes exchange whether each
    succeeded and those digests (an all-gather: every process must reach the end of the block).

    Args:
      on_failure: what a failure means for the others, ending their line ("no process started").
      cleanup: run on every process when any failed, before raising (e.g. removing its own work);
        not when a process was interrupted (Ctrl-C), whose work is kept to be resumed.
      say: gets one line when an interrupted process waits for the others to reach the exchange.

    Raises:
      On the process whose block raised, its own exception. On the others, `DistributedError`
      naming the process and its error's first line; on every process, `DistributedError` naming
      the processes whose settings differ from process 0's, and which settings.
    """
    settings: dict = {}
    if jax.process_count() == 1:
        yield settings
        return
    try:
        yield settings
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        if interrupted:
            say(f"process {jax.process_index()}: interrupted; telling the other processes, once each reaches the end of "
                "this part of its work")
        with contextlib.suppress(DistributedError):  # this process's own failure is the line it prints
            _exchange({"failure": _first_line(err), "interrupted": interrupted}, lost_code=130 if interrupted else 1)
        if not interrupted:
            _clean(cleanup)
        raise
    records = _exchange({"failure": None, "settings": _digests(settings)})
    failed = [(process, record["failure"]) for process, record in enumerate(records) if record["failure"] is not None]
    if failed:
        if not any(record.get("interrupted") for record in records):  # an interrupted run's work stays, to be resumed
            _clean(cleanup)
        process, line = failed[0]
        others = f" (and {len(failed) - 1} other process(es))" if len(failed) > 1 else ""
        raise DistributedError(f"process {process}{others}: {line}; {on_failure}")
    reference = records[0]["settings"]
    differing = {process: record["settings"] for process, record in enumerate(records) if record["settings"] != reference}
    if differing:
        names = sorted({name for theirs in differing.values() for name in {*theirs, *reference}
                        if theirs.get(name) != reference.get(name)})
        who = (f"process {next(iter(differing))}: its settings differ" if len(differing) == 1 else
               f"processes {', '.join(map(str, differing))}: their settings differ")
        raise DistributedError(f"{who} from process 0's ({', '.join(names)}); every process must be given the same "
                               f"options and inputs; {on_failure}")


def _clean(cleanup: Callable[[], None] | None) -> None:
    if cleanup is not None:
        with contextlib.suppress(OSError, JaxmosaicError):  # the failure being reported matters more than what is left
            cleanup()


def _digests(settings: dict) -> dict[str, str]:
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for name, value in settings.items()}


def _exchange(record: dict, *, lost_code: int = 1) -> list[dict]:
    """Every process's `record` (JSON), in process order; when a peer has gone, this process will
    leave at exit with `lost_code`."""
    from jax.experimental import multihost_utils

    payload = json.dumps(record, ensure_ascii=False).encode()
    if len(payload) > _RECORD_BYTES:
        raise ValueError(f"a record of {len(payload)} bytes does not fit the {_RECORD_BYTES} the processes exchange")
    block = np.zeros(_RECORD_BYTES, np.uint8)
    block[: len(payload)] = np.frombuffer(payload, np.uint8)
    try:
        gathered = np.asarray(multihost_utils.process_allgather(block))
    except (RuntimeError, ValueError) as err:  # how JAX reports a collective whose peer has gone
        atexit.register(_leave_now, lost_code)  # JAX's teardown would wait for the peer's heartbeat to time out
        raise DistributedError(f"the processes could not tell each other how they fared ({_first_line(err)}); "
                               "a process may have stopped") from None
    return [json.loads(row.tobytes().rstrip(b"\0")) for row in gathered]
