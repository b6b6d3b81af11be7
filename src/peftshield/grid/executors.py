"""Where a grid's cells run: the executor interface, local processes, and a Ray cluster.

The runner (:mod:`.runner`) decides WHAT runs (the unfinished cells, in plan order) and records
each row as it arrives (progress bar, ETA, cell log, ``grid.json``); an :class:`Executor` decides
WHERE: ``run(cells, results, device, finished)`` runs every cell and calls ``finished(cell, row)``
once per cell, in the driver. Both executors share the content-addressed store
(:class:`~.cache.ArtifactStore`) under ``RESULTS/artifacts``, whose locks keep any artifact from
being built twice, and every cell writes its own ``cells/<id>.json``, so a killed driver resumes
from the finished cells whichever executor ran them (bench/README.md "Grid executors and scale").

- :class:`LocalExecutor` (``--executor local``, the default): ``--jobs 1`` runs the cells in this
  process; ``--jobs N`` on N spawned worker processes, each with its share of the cores. Workers
  die with the driver (:func:`peftshield.utils.lifetime.die_with_parent`); on SIGTERM or an
  interrupt the driver terminates them before it exits.
- :class:`RayExecutor` (``--executor ray``, the ``ray`` extra): every artifact build and every
  cell's evaluation is a Ray task with the resources its kind declares
  (:data:`TASK_RESOURCES`: CPUs, and a GPU share where the cluster has GPUs), chained by the
  stage graph so that no task waits on a lock for another one's artifact; a task whose worker
  dies is retried (``max_retries``), and a retried task that finds its result written returns
  it instead of running twice. ``ray`` is imported only here, and only when this executor runs.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.grid.plan import Cell

#: ``finished(cell, row)``: the runner's callback, called in the driver once per cell.
Finished = Callable[[Cell, dict[str, Any]], None]
EXECUTORS = ("local", "ray")


class Executor(ABC):
    """Runs a grid's cells somewhere and reports each row to the driver (see the module docstring)."""

    name: str = "executor"

    def check(self) -> None:  # noqa: B027 - optional hook, most executors need no check
        """Fail with a one-line :class:`~peftshield.errors.PeftshieldError` before anything is created."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the run's header: where the cells run."""

    @abstractmethod
    def run(self, cells: list[Cell], results: Path, device: str, finished: Finished) -> None:
        """Run every cell of ``cells`` into ``results``; call ``finished(cell, row)`` for each one."""


# --------------------------------------------------------------------------------------- local


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: the cores shared out, capped by ``OMP_NUM_THREADS`` when set."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        threads = min(threads, int(env))
    return threads


def _init_worker(threads: int, parent_pid: int, registry: dict[str, str]) -> None:
    from peftshield.defenses.base import adopt_registrations
    from peftshield.utils.lifetime import die_with_parent

    die_with_parent(parent_pid)
    adopt_registrations(registry)  # the driver's own defences, registered in the driver
    import torch

    torch.set_num_threads(threads)


def _stop_pool(pool: Any) -> None:
    """Terminate a process pool's workers now (running cells are abandoned; they rerun next time)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # CPython's pid -> Process table
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class LocalExecutor(Executor):
    """``jobs`` worker processes on this machine (``1``: the cells run in this process)."""

    jobs: int = 1
    name: str = "local"

    def check(self) -> None:
        """``jobs`` must be a positive integer."""
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise PeftshieldError(f"--jobs must be a positive integer, got {self.jobs!r}")

    def describe(self) -> str:
        """``local, 2 jobs``."""
        return f"local, {self.jobs} job{'s' if self.jobs != 1 else ''}"

    def run(self, cells: list[Cell], results: Path, device: str, finished: Finished) -> None:
        """Run ``cells`` here (one job) or on ``jobs`` spawned workers; report rows as they arrive."""
        from peftshield.grid.stages import execute_cell, reset_memos

        if self.jobs == 1:
            reset_memos()
            for cell in cells:
                finished(cell, execute_cell(cell, results, device))
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from peftshield.defenses.base import registered_detectors
        from peftshield.grid.stages import record_failure

        context = multiprocessing.get_context("spawn")  # fork after torch is imported is unsafe
        pool = ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(worker_threads(self.jobs), os.getpid(), registered_detectors()),
        )
        try:
            pending = {pool.submit(execute_cell, cell, str(results), device): cell for cell in cells}
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    cell = pending.pop(future)
                    try:
                        row = future.result()
                    except BrokenProcessPool as err:  # a worker died (out of memory, killed)
                        row = record_failure(cell, results, f"worker process died: {err}")
                    finished(cell, row)
        except BaseException:  # interrupt, SIGTERM (Terminated), a bug: no worker outlives the driver
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------- ray


@dataclass(frozen=True)
class TaskResources:
    """What one Ray task of a kind asks the scheduler for: CPUs, and whether it uses a GPU."""

    num_cpus: float = 1.0
    wants_gpu: bool = True


#: Per task kind (the four stage kinds, and ``cell``: loading the artifacts and evaluating). Every
#: kind runs a model, so every kind takes a GPU share where the cluster has GPUs.
TASK_RESOURCES: dict[str, TaskResources] = {
    "poison": TaskResources(),
    "victim": TaskResources(),
    "scan": TaskResources(),
    "defense": TaskResources(),
    "cell": TaskResources(),
}
RAY_EXTRA_HINT = "pip install 'peftshield[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise PeftshieldError(f"--executor ray needs Ray: {RAY_EXTRA_HINT}") from None
    return ray


def _worker_setup(threads: int, registry: dict[str, str]) -> None:
    import torch

    from peftshield.defenses.base import adopt_registrations
    from peftshield.grid.stages import forget_failures

    torch.set_num_threads(max(1, threads))
    adopt_registrations(registry)
    forget_failures()  # a Ray worker serves many tasks; the stage graph carries the failures


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _first_error(deps: tuple[Any, ...]) -> str | None:
    return next((d["error"] for d in deps if isinstance(d, dict) and d.get("error")), None)


def ray_stage_task(
    cell: Cell,
    results: str,
    device: str,
    upto: str,
    worker: tuple[int, dict[str, str]],
    *deps: dict[str, Any],
) -> dict[str, Any]:
    """Ray task: build the artifacts of ``cell`` up to kind ``upto`` (its inputs were built by ``deps``)."""
    from peftshield.grid.stages import build_stages

    failed = _first_error(deps)
    if failed is not None:
        return {"cell": cell.id, "upto": upto, "error": failed}
    _worker_setup(*worker)
    return build_stages(cell, results, device, upto)


def ray_cell_task(
    cell: Cell, results: str, device: str, worker: tuple[int, dict[str, str]], *deps: dict[str, Any]
) -> dict[str, Any]:
    """Ray task: evaluate ``cell`` (its artifacts were built by ``deps``) and write its row."""
    from peftshield.grid.stages import execute_cell, read_row, record_failure

    row = read_row(Path(results), cell.id)
    if row is not None and "error" not in row:  # a retry of an attempt that finished: never run twice
        return row
    failed = _first_error(deps)
    if failed is not None:
        return record_failure(cell, results, f"a stage this cell needs failed: {failed}")
    _worker_setup(*worker)
    return execute_cell(cell, results, device)


@dataclass
class RayExecutor(Executor):
    """Cells and artifact builds as Ray tasks (see the module docstring).

    ``address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); ``None`` starts
    a local one on this machine with ``local_cpus`` CPUs (default: all), or uses the Ray instance
    this process already started. ``cpus_per_task`` CPUs (and torch threads) per task;
    ``gpus_per_task``: the GPU share of a task where the cluster has GPUs (``0.25`` runs four
    ``minilm`` tasks on one GPU); ``max_retries``: re-runs of a task whose worker died.
    """

    address: str | None = None
    local_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 1.0
    max_retries: int = 3
    name: str = "ray"

    def check(self) -> None:
        """Ray is installed and every setting is in range (nothing is started yet)."""
        import_ray()
        if self.address is not None and self.local_cpus is not None:
            raise PeftshieldError(
                "--jobs sets the CPUs of a local Ray cluster; with --address the cluster has its own"
            )
        if self.local_cpus is not None and (
            isinstance(self.local_cpus, bool) or not isinstance(self.local_cpus, int) or self.local_cpus < 1
        ):
            raise PeftshieldError(f"--jobs must be a positive integer, got {self.local_cpus!r}")
        for name, value in (("--cpus-per-task", self.cpus_per_task), ("--gpus-per-task", self.gpus_per_task)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise PeftshieldError(f"{name} must be a positive number, got {value!r}")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise PeftshieldError(f"--max-retries must be an integer >= 0, got {self.max_retries!r}")

    def describe(self) -> str:
        """``ray (local cluster), 1 CPU per task``."""
        where = f"cluster {self.address}" if self.address else "local cluster"
        return f"ray ({where}), {self.cpus_per_task:g} CPU per task, {self.max_retries} retries"

    def _connect(self, ray: Any) -> bool:
        """Join or start the cluster; return whether this call started it (and must shut it down)."""
        import logging

        if ray.is_initialized():
            return False
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.local_cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = _first_line(err)
            raise PeftshieldError(
                f"cannot start or reach the Ray cluster {self.address or ''}: {first}"
            ) from None
        return True

    def _options(self, kind: str, gpus: bool, title: str) -> dict[str, Any]:
        wants = TASK_RESOURCES[kind]
        return {
            "num_cpus": max(wants.num_cpus, self.cpus_per_task),
            "num_gpus": self.gpus_per_task if gpus and wants.wants_gpu else 0,
            "max_retries": self.max_retries,
            "name": f"{kind}:{title}"[:200],
        }

    def run(self, cells: list[Cell], results: Path, device: str, finished: Finished) -> None:
        """Submit the stage graph of ``cells`` (unbuilt artifacts only), then collect rows as cells end."""
        from peftshield.defenses.base import registered_detectors
        from peftshield.grid.cache import ArtifactStore
        from peftshield.grid.stages import record_failure

        if not cells:
            return
        ray = import_ray()
        started_here = self._connect(ray)
        refs: list[Any] = []
        try:
            available = ray.cluster_resources()
            if available.get("CPU", 0) < self.cpus_per_task:
                raise PeftshieldError(
                    f"the Ray cluster has {available.get('CPU', 0):g} CPUs; "
                    f"a task asks for {self.cpus_per_task:g}"
                )
            gpus = device != "cpu" and available.get("GPU", 0) > 0
            if device.startswith("cuda") and not gpus:
                raise PeftshieldError("--device cuda was asked for but the Ray cluster has no GPU")
            # torch threads, and the driver's detector registry (a user's own defence)
            worker = (max(1, int(self.cpus_per_task)), registered_detectors())
            stage_task = ray.remote(ray_stage_task)
            cell_task = ray.remote(ray_cell_task)
            store = ArtifactStore(results)
            by_key: dict[str, Any] = {}
            by_ref: dict[Any, Cell] = {}
            for cell in cells:
                deps: list[Any] = []
                for stage in cell.stages():
                    if stage.key not in by_key and not store.is_built(stage):
                        options = self._options(stage.kind, gpus, f"{stage.describe()} {cell.title()}")
                        by_key[stage.key] = stage_task.options(**options).remote(
                            cell, str(results), device, stage.kind, worker, *deps
                        )
                        refs.append(by_key[stage.key])
                    if stage.key in by_key:
                        deps.append(by_key[stage.key])
                ref = cell_task.options(**self._options("cell", gpus, cell.title())).remote(
                    cell, str(results), device, worker, *deps
                )
                by_ref[ref] = cell
                refs.append(ref)
            pending = list(by_ref)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    cell = by_ref[ref]
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as err:  # retries spent, node lost, out of memory
                        first = _first_line(err)
                        row = record_failure(
                            cell, results, f"Ray task failed after {self.max_retries} retries: {first}"
                        )
                    finished(cell, row)
        except BaseException:  # interrupt, SIGTERM (Terminated), a bug: stop what is still queued
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - finished or already gone: nothing to stop
                    pass
            raise
        finally:
            if started_here:
                ray.shutdown()


def make_executor(
    name: str,
    *,
    jobs: int | None = None,
    address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 1.0,
    max_retries: int = 3,
) -> Executor:
    """The executor named ``name`` (``local`` or ``ray``) from the command line's options, checked."""
    if name == "local":
        if address is not None:
            raise PeftshieldError("--address is for --executor ray")
        executor: Executor = LocalExecutor(jobs=1 if jobs is None else jobs)
    elif name == "ray":
        executor = RayExecutor(
            address=address,
            local_cpus=jobs,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            max_retries=max_retries,
        )
    else:
        raise PeftshieldError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    executor.check()
    return executor
