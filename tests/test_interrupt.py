"""Interrupted runs resume exactly: Ctrl-C (SIGINT) mid-epoch or during a checkpoint write, and SIGKILL during a
save or between the checkpoint and results.csv, then `--resume`, end with the same weights and the same
results.csv as an uninterrupted run, and leave no debris."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from lightdet import engine  # noqa: E402
from lightdet.checkpoint import interrupts_deferred, load_checkpoint, save_checkpoint  # noqa: E402
from lightdet.data import generate_shapes  # noqa: E402

# two epochs of two steps each (8 images, batch 4, no accumulation), validated after each epoch
RUN = ["--img", "64", "--batch", "4", "--nominal-batch", "4", "--epochs", "2", "--optimizer", "AdamW", "--lr",
       "0.001", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, processes=1)


def run_args(data, project):
    return ["--data", str(data), "--project", str(project), *RUN]


@pytest.fixture(scope="module")
def straight(tiny_shapes, tmp_path_factory):
    """The uninterrupted run's folder."""
    _, _, run_dir = train.train(train.parse_args(run_args(tiny_shapes, tmp_path_factory.mktemp("straight"))))
    return run_dir


def resume_and_compare(run_dir, straight):
    train.train(train.parse_args(["--resume", str(run_dir / "weights" / "last.pt"), "--workers", "0"]))
    for name in ("last.pt", "best.pt"):
        expected, got = load_checkpoint(straight / "weights" / name), load_checkpoint(run_dir / "weights" / name)
        assert got["epoch"] == expected["epoch"] == 1 and got.get("stripped")
        for key, value in expected["model"].items():
            assert torch.equal(value, got["model"][key]), (name, key)
    assert (run_dir / "results.csv").read_text() == (straight / "results.csv").read_text()
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["best.pt", "last.pt"]


def test_a_signal_during_a_deferred_block_arrives_after_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            save_checkpoint({"model": {}, "config": {}}, tmp_path / "a.pt")   # nested: still deferred
            finished = True
    assert finished and load_checkpoint(tmp_path / "a.pt") == {"model": {}, "config": {}}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_mid_epoch_resumes_exactly(tiny_shapes, straight, tmp_path, monkeypatch, capsys):
    set_lr = train.set_learning_rate

    def interrupt_at_step_1(optimizer, step, *rest, **kw):   # in the first epoch, after one optimizer step
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return set_lr(optimizer, step, *rest, **kw)
    monkeypatch.setattr(train, "set_learning_rate", interrupt_at_step_1)
    with pytest.raises(SystemExit) as stop:
        train.main(run_args(tiny_shapes, tmp_path))
    assert stop.value.code == 130 and "interrupted" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")["epoch"] == -1   # the initial state
    monkeypatch.setattr(train, "set_learning_rate", set_lr)
    resume_and_compare(tmp_path / "exp", straight)


def test_a_time_budget_is_decided_once_recorded_and_resumed_exactly(tiny_shapes, straight, tmp_path, monkeypatch,
                                                                    capsys):
    decided, set_lr = [], train.set_learning_rate
    monkeypatch.setattr(engine, "epochs_within", lambda *args: decided.append(args) or 2)

    def interrupt_in_epoch_2(optimizer, step, *rest, **kw):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return set_lr(optimizer, step, *rest, **kw)
    monkeypatch.setattr(train, "set_learning_rate", interrupt_in_epoch_2)
    budget = [flag for flag in run_args(tiny_shapes, tmp_path) if flag not in ("--epochs", "2")] + ["--time", "5"]
    with pytest.raises(SystemExit):
        train.main(budget)
    seconds_left, epoch_seconds, validation_seconds, val_every = decided[0]
    assert 0 < seconds_left < 300 and epoch_seconds > 0 and validation_seconds > 0 and val_every == 1
    out = capsys.readouterr().out
    assert "time budget 5 min" in out and "→ 2 epochs" in out and "--epochs 2 repeats this schedule" in out
    last = load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")
    assert last["epoch"] == 0 and (last["args"]["epochs"], last["args"]["time"]) == (2, 5.0)
    monkeypatch.setattr(train, "set_learning_rate", set_lr)
    monkeypatch.setattr(engine, "epochs_within", lambda *args: pytest.fail("a resumed run decided again"))
    resume_and_compare(tmp_path / "exp", straight)   # the schedule of --epochs 2, to the last bit


def test_ctrl_c_during_a_checkpoint_write(tiny_shapes, straight, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def interrupted_save(obj, f, *args, **kwargs):   # the third save: epoch 1's last.pt, after its best.pt
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)   # lands inside the zip writer without the deferral
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(SystemExit) as stop:
        train.main(run_args(tiny_shapes, tmp_path))
    assert stop.value.code == 130 and "interrupted" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")["epoch"] == 0   # written in full
    monkeypatch.setattr(torch, "save", real_save)
    resume_and_compare(tmp_path / "exp", straight)


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
import train
point, calls = sys.argv[1], []
real_save, real_write = torch.save, train.write_results

def save(obj, f, *args, **kwargs):   # the fourth save: epoch 2's best.pt (or last.pt), killed half written
    calls.append(1)
    if point == "save" and len(calls) == 4:
        f.write(b"PK half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

def write_results(run_dir, rows):   # right after the last.pt of the second epoch
    if point == "results" and len(rows) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(run_dir, rows)

torch.save, train.write_results = save, write_results
train.main(sys.argv[2:])
"""


def test_sigkill_then_resume_is_exact_and_tidy(tiny_shapes, straight, tmp_path):
    """Killed while writing epoch 2's checkpoint; resumed, and killed again between epoch 2's last.pt and its
    results.csv row; resumed once more."""
    script = tmp_path / "killed_train.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    last = tmp_path / "exp" / "weights" / "last.pt"
    for point, argv in (("save", run_args(tiny_shapes, tmp_path)), ("results", ["--resume", str(last)])):
        result = subprocess.run([sys.executable, str(script), point, *argv], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        if point == "save":
            assert load_checkpoint(last)["epoch"] == 0 and list(last.parent.glob(".*.pt.*.tmp"))   # debris
    assert load_checkpoint(last)["epoch"] == 1 and "2," not in (tmp_path / "exp" / "results.csv").read_text()
    resume_and_compare(tmp_path / "exp", straight)
