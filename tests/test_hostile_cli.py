"""Hostile use of the analysis CLIs: every bad input is one stderr line and exit code 2,
nothing is left behind, and errors name the file they are about."""
import pytest
import torch

from nextlat_probe.cli import run_main


def _run(module, argv, capsys):
    import importlib

    main = importlib.import_module(f"nextlat_probe.{module}").main
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err.strip()


def _one_line(code, err):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "nonsense:0"])
@pytest.mark.parametrize("module", ["rank", "probe", "transition", "worldmodel", "mapping"])
def test_bad_devices_are_one_line(module, device, tiny_mess3_ckpts, tiny_taxi_ckpts, capsys):
    ck = tiny_taxi_ckpts["gpt"] if module in ("worldmodel", "mapping") else tiny_mess3_ckpts["gpt"]
    code, _, err = _run(module, [str(ck), "--device", device], capsys)
    _one_line(code, err)
    assert "device" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_gpu_is_one_line(tiny_mess3_ckpts, capsys):
    for module in ("rank", "probe", "transition"):
        code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--device", "cuda"], capsys)
        _one_line(code, err)
        assert "cuda" in err.lower()


@pytest.mark.parametrize("module", ["rank", "probe"])
def test_seq_len_zero_is_refused(module, tiny_mess3_ckpts, capsys):
    code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--seq-len", "0"], capsys)
    _one_line(code, err)
    assert "--seq-len" in err


@pytest.mark.parametrize("module", ["probe", "transition", "rank"])
def test_plot_into_a_directory_leaves_nothing(module, tiny_mess3_ckpts, tmp_path, capsys):
    target = tmp_path / "figs"
    target.mkdir()
    code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--plot", str(target)], capsys)
    _one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"] and not any(target.iterdir())


def test_nan_weights_name_their_file(tiny_mess3_ckpts, tmp_path, capsys):
    raw = torch.load(tiny_mess3_ckpts["gpt"], weights_only=True)
    key = next(k for k, v in raw["model"].items() if v.is_floating_point() and v.dim() == 2)
    raw["model"][key] = torch.full_like(raw["model"][key], float("nan"))
    bad = tmp_path / "nan-run" / "ckpt.pt"
    bad.parent.mkdir()
    torch.save(raw, bad)
    for module, extra in (("rank", []), ("probe", ["--n-test", "4"])):
        code, _, err = _run(module, [str(bad), "--n-seqs", "8", *extra], capsys)
        _one_line(code, err)
        assert str(bad) in err


def test_mixed_worlds_are_analysed_each_on_its_own(tiny_mess3_ckpts, tiny_taxi_ckpts, capsys):
    code, out, err = _run("rank", [str(tiny_mess3_ckpts["gpt"]), str(tiny_taxi_ckpts["gpt"]), "--n-seqs", "8",
                                   "--no-progress"], capsys)
    assert code == 0, err
    assert "different worlds" in err and "gpt#1" in out and "gpt#2" in out  # same run name: told apart
    assert "seq_len=12|15" in out  # each world at its own training length


def test_mapping_flags_and_layers(tiny_taxi_ckpts, tmp_path, capsys):
    ck = str(tiny_taxi_ckpts["gpt"])
    code, _, err = _run("mapping", [ck, "--layers", "5"], capsys)
    _one_line(code, err)
    code, _, err = _run("mapping", [ck, "--layers", "0,1"], capsys)
    _one_line(code, err)
    page = tmp_path / "m.html"
    code, out, err = _run("mapping", [ck, "--n-trips", "20", "--n-seqs", "16", "--plot", str(page), "--no-progress"],
                          capsys)
    assert code == 0, err
    assert page.stat().st_size > 1000 and "edges recovered" in out


def test_nan_map_coordinates_name_the_file(tmp_path, capsys):
    import json

    from nextlat_probe.worlds.streetmap import synthetic_manhattan

    d = synthetic_manhattan(3, 3, seed=0).to_dict()
    d["coords"][2] = [float("nan"), 1.0]
    path = tmp_path / "nan-map.json"
    path.write_text(json.dumps(d))
    (tmp_path / "trips.txt").write_text("0 1 E end\n")
    code, _, err = _run("mapping", ["--map", str(path), "--trajectories", str(tmp_path / "trips.txt")], capsys)
    _one_line(code, err)
    assert str(path) in err and "NaN" in err


def test_a_directory_of_trips_is_named_as_one(tmp_path, capsys):
    from nextlat_probe.worlds.streetmap import synthetic_manhattan

    synthetic_manhattan(3, 3, seed=0).to_json(tmp_path / "map.json")
    (tmp_path / "trips").mkdir()
    for module, argv in (("mapping", ["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "trips")]),
                         ("taxi", ["check", "--map", str(tmp_path / "map.json"), str(tmp_path / "trips")])):
        code, _, err = _run(module, argv, capsys)
        _one_line(code, err)
        assert "directory" in err and "no such file" not in err, (module, err)


def test_closed_stdout_pipe_is_not_a_traceback():
    """``python -m nextlat_probe.taxi sample ... | head -1``: the reader leaves early."""
    import subprocess
    import sys

    from helpers import ROOT

    cmd = f"'{sys.executable}' -m nextlat_probe.taxi sample --n 20000 | head -1"
    res = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.stdout.count("\n") == 1 and res.stdout.split()[-1] == "end"
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.returncode == 141  # as a program ended by SIGPIPE (pipefail: the CLI's own status)
