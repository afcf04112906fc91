"""python -m zsl.train: real runs (ESZSL on simulated CUB), TensorBoard files, resume, bad input -> exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zsl import train
from zsl.models import make_config
from zsl.models.eszsl import ESZSL

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--model", "eszsl", "--dataset", "sim-CUB", "--preset", "small", "--set", "steps_per_epoch=5", "--device", "cpu"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "zsl.train", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars of out/tensorboard as {tag: [(step, value), ...]} (latest event per step)."""
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    result = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        result[tag] = sorted(by_step.items())
    return result


def test_run_writes_tensorboard_config_results_and_labels_simulated(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*FAST, "--epochs", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "simulated" in proc.stdout.lower()
    assert "sim-CUB (simulated)" in proc.stdout and "validation" in proc.stdout
    tb = scalars(out)
    for tag in ("eval/S", "eval/U", "eval/H", "eval/ZSL", "train/eszsl/loss"):
        assert [step for step, _ in tb[tag]] == [1, 2, 3], tag
    results = json.loads((out / "results.json").read_text())
    assert results["simulated"] is True and results["epochs"] == 3
    assert results["final"]["H"] == pytest.approx(tb["eval/H"][-1][1], rel=1e-5)
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == "eszsl" and saved["config"]["epochs"] == 3 and saved["config"]["steps_per_epoch"] == 5
    # the written config.yaml replays: same hyperparameters through --config
    args = train.build_parser().parse_args(["--config", str(out / "config.yaml")])
    assert train.resolve_spec(args).config == saved["config"]


def test_existing_out_is_refused_then_force_overwrites(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert train.main([*FAST, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing half-written
    assert train.main([*FAST, "--epochs", "1", "--out", str(out), "--force"]) == 0
    assert (out / "keep.txt").exists() and (out / "checkpoint.pt").exists()


def test_resume_continues_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train.main([*FAST, "--epochs", "4", "--out", str(full)]) == 0
    original = ESZSL.train_epoch

    def interrupted(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(ESZSL, "train_epoch", interrupted)
    assert train.main([*FAST, "--epochs", "4", "--out", str(cut)]) == 130
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(ESZSL, "train_epoch", original)
    capsys.readouterr()
    proc = run_cli(*FAST, "--epochs", "4", "--out", str(cut), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stdout and "after epoch 2" in proc.stdout
    a = json.loads((full / "results.json").read_text())["final"]
    b = json.loads((cut / "results.json").read_text())["final"]
    for key in ("S", "U", "H", "ZSL"):
        assert b[key] == pytest.approx(a[key], abs=1e-9)
    assert [step for step, _ in scalars(cut)["eval/H"]] == [1, 2, 3, 4]
    # resuming with different settings is refused
    assert train.main([*FAST, "--epochs", "4", "--set", "gamma=2", "--out", str(cut), "--resume"]) == 2
    assert "gamma" in capsys.readouterr().err


def test_resume_on_another_device_type_is_refused(tmp_path, capsys):
    """A checkpoint's random streams belong to its device type (a CUDA generator state cannot seed a
    CPU one): resuming it elsewhere is one sentence and exit 2, and the checkpoint is left as it was."""
    out = tmp_path / "run"
    assert train.main([*FAST, "--epochs", "2", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"]["device_type"] == "cpu"
    state["model"]["device_type"] = "cuda"          # as written by a run on a GPU
    torch.save(state, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train.main([*FAST, "--epochs", "2", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cuda device" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == before


def _bad_config(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text("config: {lr: [1,\n")
    return str(path)


def _unknown_key_config(tmp_path: Path) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text("model: eszsl\nhyper: {lr: 1}\n")
    return str(path)


BAD_INPUTS = {
    "unknown model": (["--model", "nope", "--dataset", "sim-CUB"], "model"),
    "unknown dataset": (["--model", "eszsl", "--dataset", "sim-XYZ"], "dataset"),
    "unknown preset": (["--model", "eszsl", "--dataset", "sim-CUB", "--preset", "huge"], "preset"),
    "unknown key": ([*FAST, "--set", "nokey=1"], "nokey"),
    "set without =": ([*FAST, "--set", "gamma"], "--set"),
    "set bad yaml": ([*FAST, "--set", "gamma=[1,"], "--set"),
    "wrong value type": ([*FAST, "--set", "epochs=two"], "epochs"),
    "out-of-range value": ([*FAST, "--set", "gamma=-1"], "gamma"),
    "epochs zero": ([*FAST, "--epochs", "0"], "--epochs"),
    "missing config file": ([*FAST, "--config", "/nonexistent/x.yaml"], "--config"),
    "missing model": (["--dataset", "sim-CUB"], "--model"),
    "bad device": ([*FAST, "--device", "tpu"], "--device"),
    "resume without checkpoint": ([*FAST, "--resume"], "--resume"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    argv, culprit = BAD_INPUTS[case]
    assert train.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and culprit in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", [_bad_config, _unknown_key_config])
def test_bad_config_file_is_one_line_exit_2(make, tmp_path, capsys):
    assert train.main([*FAST, "--config", make(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--config" in err


def test_user_error_in_a_real_process_is_one_line_exit_2():
    proc = run_cli("--model", "nope", "--dataset", "sim-CUB")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_exits_2(tmp_path, capsys):
    assert train.main([*FAST, "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and err.count("\n") == 0


def test_config_file_precedence_and_yaml_values(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("model: eszsl\npreset: small\ndataset: sim-CUB\nconfig: {gamma: 1e-2, lam: 0.5}\n"
                    "per_dataset: {CUB: {lam: 0.25}, AWA2: {lam: 9.0}}\n")
    args = train.build_parser().parse_args(["--config", str(path), "--set", "gamma=3", "--epochs", "7"])
    spec = train.resolve_spec(args)
    assert (spec.model, spec.dataset, spec.preset) == ("eszsl", "sim-CUB", "small")
    assert spec.config["gamma"] == 3.0       # --set over the file
    assert spec.config["lam"] == 0.25        # per_dataset (CUB) over config
    assert spec.config["epochs"] == 7        # --epochs over everything
    assert spec.config["solver"] == "gradient"  # from the preset
    assert train.parse_sets(["a=1e-3", "b=true", "c=[1, 2]", "d=V"]) == {"a": 1e-3, "b": True, "c": [1, 2], "d": "V"}


@pytest.mark.parametrize("model, preset, keys", [("eszsl", None, ("epochs",)), ("revcd", None, ("epochs",)),
                                                ("d2sc", "paper", ("drg_epochs", "dfg_epochs"))])
def test_epoch_budget_is_the_models_rule_exact_or_capped(model, preset, keys):
    """--epochs sets the run's epochs in all, --max-epochs caps them; a two-stage model shortens both stages
    in proportion (300 + 300 capped at 10 -> 5 + 5, not 10 DRG epochs and no DFG)."""
    from zsl.models import get_model
    from zsl.run import resolve_config

    cls = get_model(model)
    full = resolve_config(model, preset, "sim-CUB")
    assert cls.epochs_in(resolve_config(model, preset, "sim-CUB", epochs=7)) == 7
    capped = resolve_config(model, preset, "sim-CUB", max_epochs=10)
    assert cls.epochs_in(capped) == min(10, cls.epochs_in(full))
    assert resolve_config(model, preset, "sim-CUB", max_epochs=10_000) == full  # a cap above the budget: unchanged
    if len(keys) == 2:
        assert [capped[k] for k in keys] == [5, 5]
