"""Ray for the corpus sweep: one actor per worker keeps the models and compiled graphs for its life.

Locally (`address=None`) Ray starts inside this process with no setup, a small
object store and as many CPUs as the machine has; `address` joins a running cluster
(its nodes need fidelity installed; clips travel as bytes, so no shared filesystem is
needed). CPU workers take `cpus_per_worker` CPUs each (that many threads for torch and
MAX; locally one per worker, as many workers as CPUs and memory allow); GPU workers
take one GPU each and a share of the CPUs, since openai-whisper's float64 truth, the
statistics and the e2e decoder run on the CPU whatever the device. Each worker keeps
two clips queued so it never waits for the driver. A worker that dies yields an error
row for its clip and is replaced.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlparse

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from ..errors import FidelityError
from .configs import Configuration
from .one_clip import ClipComparer, ClipInput

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
INIT_TIMEOUT_S = 90.0
LOCAL_START_ATTEMPTS = 5
AGENT_TIMEOUT_MS = 120_000
IN_FLIGHT_PER_WORKER = 2
WORKER_MEMORY = 3 * 2 ** 30  # what a CPU worker may need (tiny.en: about 2 GiB at its peak)


@dataclass
class RayOptions:
    address: str | None = None
    device: str = "cpu"
    workers: int | None = None          # None: the default for the device and the cluster
    cpus_per_worker: int | None = None  # None: all of a local machine's CPUs for one worker, else 2
    object_store_mb: int = 128
    verbose: bool = False
    reference_cache: str | None = None  # a folder each worker keeps reference runs in (beside the rows)


@dataclass
class WorkerStats:
    worker: str = ""
    start_s: float = 0.0               # actor creation until its process answered (imports included)
    setup_s: float = 0.0               # building every configuration's models and graphs
    setup: dict = field(default_factory=dict)
    rows: int = 0


def start(options: RayOptions) -> dict:
    """Start or join Ray; a cluster that does not answer is one clear error (FidelityError) within bounded time."""
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": options.verbose,
              "configure_logging": True}
    if options.address:
        check_reachable(options.address)
        kwargs["address"] = options.address
    else:
        kwargs["object_store_memory"] = options.object_store_mb * 2 ** 20
        kwargs["num_cpus"] = os.cpu_count() or 1
    where = options.address or "a local Ray instance"
    try:
        if options.address:
            _init_bounded(kwargs, where)
        else:
            _init_local(kwargs)
    except FidelityError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise FidelityError(f"cannot start or join Ray at {where}: {str(exc).splitlines()[0]}") from None
    return ray.cluster_resources()


def _init_local(kwargs: dict) -> None:
    """Start Ray here, in this thread (Ray ties the processes it starts to the life of the thread that started
    them). Ray gives its node 30 s to register, which a busy machine can exceed: try again, a bounded number of times.
    """
    # The raylet gives its Python agents 15 s to come up before it aborts; on a loaded machine they need more.
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_TIMEOUT_MS))
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on this timeout
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            log.warning("Ray's node did not register in time (busy machine?); starting it again (%d/%d)",
                        attempt + 1, LOCAL_START_ATTEMPTS)


def _init_bounded(kwargs: dict, where: str) -> None:
    """Join a cluster (no local processes are started), giving up after INIT_TIMEOUT_S."""
    outcome: dict = {}

    def init():
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(INIT_TIMEOUT_S)
    if thread.is_alive():
        raise FidelityError(f"Ray at {where} did not answer within {INIT_TIMEOUT_S:.0f} s")
    if "error" in outcome:
        raise outcome["error"]


def stop() -> None:
    if ray.is_initialized():
        ray.shutdown()


def check_reachable(address: str) -> None:
    """A cluster address that does not accept a connection within CONNECT_TIMEOUT_S: FidelityError."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise FidelityError(f"--address {address}: give HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise FidelityError(f"Ray cluster at {address} does not answer: {exc.strerror or exc}") from None


def plan_workers(options: RayOptions, resources: dict) -> tuple[int, dict]:
    """(worker count, Ray resources per worker) for the device and the cluster."""
    if options.device == "gpu":
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise FidelityError("--device gpu: the Ray cluster has no GPUs")
        count = min(options.workers or gpus, gpus)
        # the float64 reference, the metrics and the e2e decoder run on CPUs even for a GPU candidate
        cpus = max(1, int(resources.get("CPU", 1)) // gpus)
        return count, {"num_gpus": 1, "num_cpus": options.cpus_per_worker or cpus}
    cpus = int(resources.get("CPU", 1))
    # locally one CPU (one thread) per worker: a row's Python, statistics and small kernels keep one thread busy
    # where two threads of one worker idle (measured: 9.9 against 7.0 rows/min on 2 cores); as many workers as
    # the memory holds
    per = options.cpus_per_worker or (1 if not options.address else 2)
    per = max(1, min(per, cpus))
    count = options.workers or max(1, cpus // per)
    if not options.workers and not options.address and resources.get("memory"):
        count = max(1, min(count, int(resources["memory"] // WORKER_MEMORY)))
    return count, {"num_cpus": per}


@ray.remote(max_restarts=0)
class SweepWorker:
    """A Ray actor wrapping one `ClipComparer`."""

    def __init__(self, verbose: bool, reference_cache: str | None = None):
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.comparer = ClipComparer(reference_cache)

    def setup(self, configs: list[Configuration]) -> dict:
        timings = {}
        for config in configs:
            try:
                timings[config.label] = self.comparer.prepare(config)
            except Exception as exc:  # noqa: BLE001 - each of its clips becomes an error row with this message
                timings[config.label] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return {"worker": self.comparer.worker, "setup": timings}

    def compare(self, clip: ClipInput, config: Configuration) -> dict:
        return self.comparer.compare_one(clip, config)


def run(tasks: Iterable[tuple[ClipInput, Configuration, dict]], total: int, configs: list[Configuration],
        options: RayOptions, resources: dict, on_row: Callable[[dict], None]) -> list[WorkerStats]:
    """Compare every (clip, configuration, row stub); `on_row` gets each finished row (stub + results)."""
    count, per_worker = plan_workers(options, resources)
    count = max(1, min(count, total))
    log.info("starting %d Ray worker(s), %s each", count, ", ".join(f"{k}={v}" for k, v in per_worker.items()))
    actor_cls = SweepWorker.options(**per_worker)
    stats: list[WorkerStats] = []
    actors: list = []

    def spawn(index: int | None = None):
        began = time.perf_counter()
        actor = actor_cls.remote(options.verbose, options.reference_cache)
        record = WorkerStats()
        ready = actor.setup.remote(configs)
        if index is None:
            actors.append(actor)
            stats.append(record)
        else:
            actors[index] = actor
            stats[index] = record
        return actor, began, ready

    starting = [spawn() for _ in range(count)]
    for (actor, began, ready), record in zip(starting, stats):
        try:
            info = ray.get(ready)
        except (RayActorError, RayTaskError) as exc:  # a worker that cannot even start fails the whole sweep
            raise FidelityError(f"a Ray worker could not start: {str(exc).splitlines()[0]}") from None
        record.worker, record.setup = info["worker"], info["setup"]
        record.start_s = time.perf_counter() - began
        record.setup_s = sum(v for t in info["setup"].values() for k, v in t.items() if k.endswith("_s"))
        log.info("worker %s ready in %.1f s (model and graphs: %.1f s)", record.worker, record.start_s,
                 record.setup_s)
    pending: dict = {}
    queue: Iterable = iter(tasks)
    free = [i for i in range(count) for _ in range(IN_FLIGHT_PER_WORKER)]

    def submit(slot: int) -> bool:
        task = next(queue, None)
        if task is None:
            return False
        clip, config, stub = task
        pending[actors[slot].compare.remote(clip, config)] = (slot, actors[slot], stub)
        return True

    for slot in free:
        submit(slot)
    while pending:
        try:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout lets Ctrl-C through
        except RayError as exc:  # Ray itself failed (its node died): stop, keeping every finished row
            raise FidelityError(f"Ray failed during the sweep ({str(exc).splitlines()[0]}); finished rows are "
                                "kept: run the same command again to resume") from None
        if not done:
            continue
        ref = done[0]
        slot, actor, stub = pending.pop(ref)
        try:
            row = ray.get(ref)
        except RayError as exc:  # the worker died, or Ray lost the task: this clip's row says so
            message = f"worker failed: {str(exc).splitlines()[0]}"
            log.warning("clip %s: %s", stub.get("clip_id"), message)
            row = {"status": "error", "error": message, "error_phase": "worker"}
            if isinstance(exc, RayActorError) and actors[slot] is actor:
                spawn(slot)  # its other queued clip fails too (an error row) and finds the new worker
        stats[slot].rows += 1
        on_row({**stub, **row})
        submit(slot)
    return stats
