"""Sweeps on a Slurm cluster, through submitit (``sweep --launcher slurm``).

One job per run of the grid (a Slurm job array, one task per run), each doing exactly
what a local worker does (``sweeps.process_run``: train, resume or reuse the run, then
evaluate its checkpoints into their caches), in the same run folders; when every job is
done, the sweep collects the caches and writes the same tables and figures as
``--workers N`` on one machine.

- Slurm options pass through: ``partition``, ``gpus_per_task``, ``cpus_per_task``,
  ``mem_gb``, ``time_min`` (the time limit per job), ``array_parallelism`` and any other
  sbatch option as ``options`` (``{"account": "lab", "qos": "high"}``).
- Pre-emption and the time limit: the job is a ``submitit.helpers.Checkpointable``; Slurm
  signals it before it is stopped, submitit requeues it, and the requeued job resumes from
  the run's newest checkpoint (the run folder is the state: nothing else is carried over).
  Training since the last save (``save_every`` steps) is done again, bit for bit.
- Failures: a job that ends without a result (killed, node failure, out of memory) or
  with an unexpected error is resubmitted, ``retries`` times at most, and also resumes
  from its checkpoints. A refusal or a diverged run (a ``NextLatError``: the same on every
  try) is not retried: it stops the sweep, as on one machine, and the other jobs are
  cancelled (their runs resume when the sweep is run again).
- ``executor = "local"``: submitit's ``LocalExecutor`` runs the same jobs as processes on
  this machine (all at once, each with ``cores // runs`` threads): a Slurm sweep tried
  without a cluster, and what the tests use.

Job scripts, logs and submitit's pickles go to ``{out}/slurm/``. Keep the sweep command
running until it prints its tables (it waits for the jobs; e.g. in tmux, or itself as a
small batch job); if it is stopped, ``scancel`` its jobs before running it again.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import submitit

from .errors import NextLatError, UsageError, one_line

#: ``SweepConfig.slurm`` keys and their defaults
SLURM_DEFAULTS: dict[str, Any] = {
    "executor": "slurm",  # "slurm" or "local" (submitit's LocalExecutor)
    "partition": None,
    "gpus_per_task": None,
    "cpus_per_task": None,
    "mem_gb": None,
    "time_min": 120,  # per job; a run that needs longer is requeued and resumes
    "array_parallelism": 256,
    "retries": 2,  # resubmissions of a failed run
    "options": {},  # further sbatch options, e.g. {"account": "lab", "qos": "high"}
    "poll_s": None,  # seconds between looks at the jobs (default: 1 local, 15 slurm)
}
EXECUTORS = ("slurm", "local")


def slurm_options(given: dict[str, Any] | None) -> dict[str, Any]:
    """``SLURM_DEFAULTS`` updated with ``given``, checked (one line per problem)."""
    opts = {**SLURM_DEFAULTS, **(given or {})}
    unknown = sorted(set(opts) - set(SLURM_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown Slurm option {unknown[0]!r} (known: {', '.join(SLURM_DEFAULTS)})")
    if opts["executor"] not in EXECUTORS:
        raise UsageError(f"--slurm-executor must be one of {', '.join(EXECUTORS)}, got {opts['executor']!r}")
    for key in ("gpus_per_task", "cpus_per_task", "time_min", "array_parallelism"):
        v = opts[key]
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise UsageError(f"--slurm-{key.replace('_', '-').replace('-min', '')} must be a positive integer, got {v!r}")
    if not (isinstance(opts["retries"], int) and opts["retries"] >= 0):
        raise UsageError(f"--slurm-retries must be an integer >= 0, got {opts['retries']!r}")
    if opts["mem_gb"] is not None and not opts["mem_gb"] > 0:
        raise UsageError(f"--slurm-mem-gb must be positive, got {opts['mem_gb']!r}")
    if not isinstance(opts["options"], dict):
        raise UsageError("Slurm options must be a dict of sbatch option -> value")
    return opts


class RunJob(submitit.helpers.Checkpointable):
    """One sweep run as a job. Requeued by submitit on pre-emption or at the time limit
    (``Checkpointable.checkpoint``: the same call again), it then resumes from the run's
    newest checkpoint, which ``process_run`` finds in the run folder. A ``NextLatError``
    comes back as ``{"error": ...}``: deterministic, it must not be retried."""

    def __call__(self, cfg_dict: dict[str, Any], spec_dict: dict[str, Any], threads: int | None) -> dict[str, Any]:
        from .sweeps import RunSpec, SweepConfig, _worker_init, available_cores, process_run

        _worker_init(threads or available_cores())
        cfg = SweepConfig.from_dict(cfg_dict)
        spec = RunSpec(**{k: v for k, v in spec_dict.items() if k != "name"})
        try:
            return process_run(cfg, spec, progress=False, log=lambda msg: print(f"[{spec.name}] {msg}", flush=True))
        except NextLatError as exc:
            return {"name": spec.name, "error": one_line(exc)}


def executor_for(cfg: Any, n_jobs: int) -> tuple[Any, dict[str, Any]]:
    """The submitit executor of a sweep (logs in ``{out}/slurm/``) and its options."""
    opts = slurm_options(cfg.slurm)
    if opts["executor"] == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm: no Slurm on this machine (sbatch not found); run the sweep where sbatch "
                         "is, or use --slurm-executor local to run the same jobs as local processes")
    folder = Path(cfg.out) / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts["executor"])
    params: dict[str, Any] = {"name": f"nextlat-{Path(cfg.out).name}", "timeout_min": opts["time_min"],
                              "cpus_per_task": opts["cpus_per_task"], "mem_gb": opts["mem_gb"],
                              "slurm_partition": opts["partition"], "slurm_gpus_per_task": opts["gpus_per_task"],
                              "slurm_array_parallelism": opts["array_parallelism"],
                              "slurm_additional_parameters": dict(opts["options"]) or None}
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--launcher slurm: {one_line(exc)}") from None
    return executor, opts


def run_jobs(cfg: Any, todo: list[Any], bar: Any, say: Callable[[str], None], executor: Any = None) -> None:
    """Submit one job per run of ``todo`` and wait for them; resubmit failed ones
    (module docstring). Returns when every run is done; raises on the first run that
    cannot be done. ``executor``: a submitit executor to use instead of ``executor_for``'s."""
    from .sweeps import threads_per_worker

    if executor is None:
        executor, opts = executor_for(cfg, len(todo))
    else:
        opts = slurm_options(cfg.slurm)
    local = opts["executor"] == "local"
    # torch threads per job: --slurm-cpus-per-task; else local jobs share this machine's
    # cores, and a Slurm job takes the cpus it was given (its affinity, read in the job)
    threads = opts["cpus_per_task"] or (threads_per_worker(len(todo)) if local else None)
    poll = opts["poll_s"] or (1.0 if local else 15.0)
    args = {spec.name: (cfg.to_dict(), spec.to_dict(), threads) for spec in todo}
    with executor.batch():
        submitted = [(spec.name, executor.submit(RunJob(), *args[spec.name])) for spec in todo]
    jobs = {name: job for name, job in submitted}
    attempts = {name: 1 for name in jobs}
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs.values()})
    say(f"submitted {len(jobs)} job(s) ({'submitit local executor' if local else 'Slurm'}: {', '.join(ids)}); "
        f"logs in {Path(cfg.out) / 'slurm'}")
    try:
        while jobs:
            time.sleep(poll)
            for name, job in list(jobs.items()):
                if not job.done():
                    continue
                del jobs[name]
                try:
                    res = job.result()
                except Exception as exc:  # noqa: BLE001 - killed, pre-empted past its requeues, node failure, a crash
                    if attempts[name] > opts["retries"]:
                        raise NextLatError(f"{name}: job {job.job_id} failed {attempts[name]} time(s), last: "
                                           f"{_reason(exc)} (logs in {Path(cfg.out) / 'slurm'})") from None
                    attempts[name] += 1
                    jobs[name] = executor.submit(RunJob(), *args[name])
                    say(f"resubmitted {name} as job {jobs[name].job_id} (attempt {attempts[name]} of "
                        f"{opts['retries'] + 1}; it resumes from its checkpoints): {_reason(exc)}")
                    continue
                if isinstance(res, dict) and res.get("error"):
                    raise NextLatError(res["error"])
                say(f"finished {name} ({'trained' if res.get('trained') else 'reused'}, {res.get('evaluated', 0)} "
                    f"evaluated, job {job.job_id})")
                bar.set_postfix_str(name)
                bar.update(1)
    except BaseException:
        for job in jobs.values():
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if jobs:
            say(f"cancelled {len(jobs)} job(s) still queued or running; running the sweep again resumes their runs")
        raise


def _reason(exc: BaseException) -> str:
    """The last meaningful line of a submitit failure (its tracebacks are long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))]
    return (useful[-1] if useful else type(exc).__name__)[:200]


__all__ = ["SLURM_DEFAULTS", "EXECUTORS", "RunJob", "slurm_options", "executor_for", "run_jobs"]
