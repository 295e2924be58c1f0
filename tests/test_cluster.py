"""``sweep --launcher slurm`` through submitit: a 2-run grid run as jobs by submitit's local
executor writes the same tables as the local launcher; failed jobs are resubmitted,
refusals are not; Slurm options reach submitit."""
import contextlib
import csv
import json

import pytest
from helpers import run_cli

from nextlat_probe.errors import NextLatError, UsageError
from nextlat_probe.sweeps import SweepConfig, grid

ARGS = ["--world", "mess3", "--objectives", "gpt,nextlat", "--presets", "tiny", "--steps", "4", "--seeds", "1",
        "--keep", "2", "--n-seqs", "12", "--batch-size", "8", "--seq-len", "8", "--n-val", "16", "--warmup", "1",
        "--device", "cpu", "--no-progress", "--no-figures"]
TABLES = ("sweep.csv", "records.jsonl", "beats.csv", "beats_matched.csv", "beats.md")


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs get --slurm-cpus-per-task 1: the same arithmetic
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_slurm_launcher_with_the_local_executor_writes_the_local_tables(tmp_path, one_torch_thread):
    from nextlat_probe.sweep import main

    local, slurm = tmp_path / "local", tmp_path / "slurm"
    assert main([*ARGS, "--out", str(local)]) == 0
    assert main([*ARGS, "--out", str(slurm), "--launcher", "slurm", "--slurm-executor", "local",
                 "--slurm-cpus-per-task", "1", "--slurm-partition", "ignored-locally", "--log", "tensorboard"]) == 0
    for name in TABLES:
        a = (local / name).read_text()
        b = (slurm / name).read_text().replace(str(slurm), str(local))
        assert a == b, name
    rows = list(csv.DictReader((local / "sweep.csv").open()))
    assert sorted({r["run"] for r in rows}) == ["gpt-tiny-s4-seed0", "nextlat-tiny-s4-lh1-lkl1-seed0"]
    # one job per run, logged by submitit; the runs logged to TensorBoard (--log passed on)
    assert len(list((slurm / "slurm").rglob("*_log.out"))) == 2
    for run in ("gpt-tiny-s4-seed0", "nextlat-tiny-s4-lh1-lkl1-seed0"):
        assert list((slurm / "mess3" / run / "tensorboard").glob("events.out.tfevents.*"))
        assert not (local / "mess3" / run / "tensorboard").exists()
    assert json.loads((slurm / "sweep_config.json").read_text())["launcher"] == "slurm"


class _Job:
    def __init__(self, name, attempt, outcome):
        self.job_id = f"{100 + attempt}_{name}"
        self.outcome = outcome
        self.cancelled = False

    def done(self):
        return True

    def result(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self, check=True):
        self.cancelled = True


class _Executor:
    """A stand-in for submitit's executor: job outcomes scripted per run and attempt."""

    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.submitted = []

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, fn, cfg_dict, spec_dict, threads):
        name = spec_dict["name"]
        attempt = sum(n == name for n, _ in self.submitted)
        self.submitted.append((name, threads))
        return _Job(name, attempt, self.outcomes[name][attempt])


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k

    def set_postfix_str(self, s):
        pass


def _cfg(tmp_path, **slurm):
    return SweepConfig(world="mess3", presets=("tiny",), steps=(4,), seeds=1, out=str(tmp_path), launcher="slurm",
                       slurm={"executor": "local", "poll_s": 0.01, **slurm})


def test_failed_jobs_are_resubmitted_and_refusals_are_not(tmp_path):
    from submitit.core.utils import UncompletedJobError

    from nextlat_probe.cluster import run_jobs

    cfg = _cfg(tmp_path, retries=2, cpus_per_task=3)
    gpt, nextlat = (s.name for s in grid(cfg))
    ok = {"trained": True, "evaluated": 2}
    killed = UncompletedJobError("Job 101 (task: 0) with path ... has not produced any output (state: NODE_FAIL)")
    ex = _Executor({gpt: [killed, killed, ok], nextlat: [ok]})
    said, bar = [], _Bar()
    run_jobs(cfg, grid(cfg), bar, said.append, executor=ex)
    assert [n for n, _ in ex.submitted] == [gpt, nextlat, gpt, gpt] and bar.n == 2
    assert {t for _, t in ex.submitted} == {3}  # --slurm-cpus-per-task: each job's torch threads
    assert sum("resubmitted" in s and "NODE_FAIL" in s for s in said) == 2

    ex = _Executor({gpt: [killed, killed, killed], nextlat: [ok]})
    with pytest.raises(NextLatError, match=r"failed 3 time\(s\).*NODE_FAIL"):
        run_jobs(cfg, grid(cfg), _Bar(), said.append, executor=ex)

    refusal = {"name": gpt, "error": "loss became nan at step 3; stopped (no checkpoint was saved)"}
    ex = _Executor({gpt: [refusal], nextlat: [ok]})
    with pytest.raises(NextLatError, match="loss became nan"):
        run_jobs(cfg, grid(cfg), _Bar(), said.append, executor=ex)
    assert [n for n, _ in ex.submitted] == [gpt, nextlat]  # a diverged run is the same on every try


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    import shutil

    from submitit.slurm.slurm import SlurmExecutor

    import nextlat_probe.cluster as cluster

    cfg = _cfg(tmp_path, executor="slurm", partition="gpu", gpus_per_task=1, cpus_per_task=4, time_min=30, mem_gb=8,
               options={"account": "lab", "qos": "high"})
    if shutil.which("sbatch") is None:  # no Slurm here: refused in one line before anything is submitted
        with pytest.raises(UsageError, match="sbatch not found"):
            cluster.executor_for(cfg, 2)
    # as on a cluster: the sbatch script submitit would submit
    monkeypatch.setattr(cluster.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex, _ = cluster.executor_for(cfg, 2)
    script = ex._executor._make_submission_file_text("python -m submitit", "uid")
    for line in ("--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=4", "--time=30", "--mem=8GB",
                 "--account=lab", "--qos=high", "--signal=USR2@90", "--job-name=nextlat-"):
        assert f"#SBATCH {line}" in script, line
    assert str(tmp_path / "slurm") in script  # logs beside the sweep
    ex, _ = cluster.executor_for(_cfg(tmp_path, partition="gpu", gpus_per_task=1), 2)
    assert ex.cluster == "local"  # the Slurm-only options do not reach the local executor


def test_bad_slurm_options_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="--slurm-time must be a positive integer"):
        _cfg(tmp_path, time_min=0)
    with pytest.raises(UsageError, match="only with --launcher slurm"):
        SweepConfig(world="mess3", out=str(tmp_path), slurm={"partition": "gpu"})
    with pytest.raises(UsageError, match="--launcher must be one of"):
        SweepConfig(world="mess3", out=str(tmp_path), launcher="k8s")
    res = run_cli("nextlat_probe.sweep", *ARGS, "--out", str(tmp_path / "x"), "--slurm-option", "account", timeout=120)
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
