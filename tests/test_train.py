"""train.py / eval.py / predict.py as a user runs them, on a tiny generated shapes set."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as eval_script  # noqa: E402  (the repository's eval.py, not the builtin)
import predict  # noqa: E402
import train  # noqa: E402
from lightdet import engine  # noqa: E402
from lightdet.backbones import DEFAULT_VARIANT  # noqa: E402
from lightdet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from lightdet.data import generate_shapes  # noqa: E402
from lightdet.losses import build_loss  # noqa: E402
from lightdet.model import build_model  # noqa: E402



@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, processes=1)


def run_train(data, project, *extra):
    return train.train(train.parse_args(["--data", str(data), "--img", "64", "--batch", "4", "--epochs", "1",
                                         "--workers", "0", "--project", str(project), *extra]))


# every family with the anchor head, and the RT-DETR head on the backbone of its article
@pytest.mark.parametrize("family, head", [(family, "anchor") for family in DEFAULT_VARIANT]
                         + [("mobilenetv3_small", "rtdetr")])
def test_train_eval_predict_every_family(family, head, tiny_shapes, tmp_path, capsys):
    model, metrics, run_dir = run_train(tiny_shapes, tmp_path / "runs", "--backbone", family, "--head", head)
    weights = run_dir / "weights"
    assert (weights / "last.pt").is_file() and (weights / "best.pt").is_file()
    assert (run_dir / "results.csv").read_text().count("\n") == 2
    for picture in ("results.png", "labels.jpg", "train_batch0.jpg", "confusion_matrix.png", "PR_curve.png"):
        assert (run_dir / picture).is_file(), picture
    assert set(metrics) >= {"P", "R", "mAP50", "mAP50_95", "per_class"}
    checkpoint = torch.load(weights / "best.pt", weights_only=True)   # plain types only
    assert checkpoint["config"]["backbone"] == family and checkpoint["config"]["head"] == head
    assert checkpoint["epoch"] == 0
    assert checkpoint["stripped"] and "optimizer" not in checkpoint and "ema" not in checkpoint   # EMA as model

    evaluated = eval_script.main(["--weights", str(weights / "best.pt"), "--workers", "0",
                                  "--save-json", str(tmp_path / "det.json")])
    assert evaluated["mAP50"] == pytest.approx(metrics["mAP50"], abs=1e-6)
    assert isinstance(json.loads((tmp_path / "det.json").read_text()), list)
    out = tmp_path / "predict"
    predict.main(["--weights", str(weights / "best.pt"), "--source", str(tiny_shapes / "images" / "val"),
                  "--out", str(out), "--conf", "0.001", "--save-json"])
    assert len(list(out.glob("*.jpg"))) == 4 and len(list(out.glob("labels/*.json"))) == 4
    assert "weights" in capsys.readouterr().out


def test_training_flags_users_of_yolov5_expect(tiny_shapes, tmp_path, monkeypatch, capsys):
    sizes, built, smoothing = [], [], []
    resize = engine.resize_batch
    monkeypatch.setattr(engine, "resize_batch", lambda images, size: sizes.append(size) or resize(images, size))
    build = train.build_dataset
    monkeypatch.setattr(train, "build_dataset", lambda *a, **k: built.append(k.get("rect")) or build(*a, **k))
    loss = train.build_loss
    monkeypatch.setattr(train, "build_loss",
                        lambda *a, **k: smoothing.append(k["hyp"]["label_smoothing"]) or loss(*a, **k))
    model, metrics, run_dir = run_train(tiny_shapes, tmp_path / "runs", "--epochs", "2", "--fraction", "0.5",
                                        "--single-cls", "--label-smoothing", "0.1", "--rect", "--multi-scale",
                                        "--save-period", "1", "--noval")
    assert "4 training images" in capsys.readouterr().out                   # --fraction 0.5 of 8
    assert model.head.num_classes == 1 and [r["class"] for r in metrics["per_class"]] == ["item"]
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["best.pt", "epoch1.pt", "epoch2.pt", "last.pt"]
    rows = (run_dir / "results.csv").read_text().splitlines()
    assert rows[1].endswith(",,,,") and not rows[2].endswith(",")          # --noval: only the last epoch
    assert sizes and all(size % 32 == 0 and 32 <= size <= 96 for size in sizes)   # 0.5-1.5 x 64
    assert built[0] is True and smoothing == [0.1]                          # --rect, --label-smoothing
    evaluated = eval_script.main(["--weights", str(run_dir / "weights" / "best.pt"), "--workers", "0"])
    assert evaluated["per_class"] == [{**evaluated["per_class"][0], "class": "item",   # eval.py knows --single-cls
                                       "instances": metrics["per_class"][0]["instances"]}]


def test_gr_ramps_over_the_first_epochs(tiny_shapes, tmp_path, monkeypatch):
    seen, forward_loss = [], engine.forward_loss
    monkeypatch.setattr(engine, "forward_loss", lambda net, criterion, *rest: seen.append(criterion.gr)
                        or forward_loss(net, criterion, *rest))
    run_train(tiny_shapes, tmp_path / "runs", "--epochs", "3", "--gr-ramp", "1.5")
    assert seen[-6:] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]   # 2 iterations per epoch: 3 ramp iterations


def test_patience_stops_early(tiny_shapes, tmp_path, monkeypatch, capsys):
    scores = iter([0.5, 0.2, 0.2])
    monkeypatch.setattr(train, "fitness", lambda metrics: next(scores))
    _, _, run_dir = run_train(tiny_shapes, tmp_path / "runs", "--epochs", "3", "--val-every", "1", "--patience", "1")
    assert "stopping early" in capsys.readouterr().out
    assert (run_dir / "results.csv").read_text().count("\n") == 3          # header and two epochs
    assert load_checkpoint(run_dir / "weights" / "best.pt")["epoch"] == 0


def test_loss_falls_on_a_repeated_batch():
    torch.manual_seed(0)
    model = build_model("cspdarknet", num_classes=2).train()
    criterion = build_loss(model, 2, imgsz=64)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.3, 0.3, 0.2, 0.3], [0, 1, 0.7, 0.6, 0.4, 0.2], [1, 1, 0.5, 0.5, 0.5, 0.5]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, _ = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fine_tuning_with_another_class_count_reinitialises_the_head(tiny_shapes, tmp_path, capsys):
    other = build_model("cspdarknet", num_classes=3)
    save_checkpoint({"model": other.state_dict(), "config": other.config, "names": ["a", "b", "c"]},
                    tmp_path / "three.pt")
    model, _, _ = run_train(tiny_shapes, tmp_path / "runs", "--weights", str(tmp_path / "three.pt"))
    assert model.head.num_classes == 6
    assert "re-initialised" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="predicts 3 classes.*has 6"):
        eval_script.main(["--weights", str(tmp_path / "three.pt"), "--data", str(tiny_shapes)])


def test_recipe_fills_only_the_flags_left_unset():
    shapes = train.resolve_args(train.parse_args(["--backbone", "repvit_m1_1", "--no-cache", "--lr", "0.01"]))
    assert (shapes.epochs, shapes.img, shapes.optimizer, shapes.nominal_batch) == (None, 160, "AdamW", 16)
    assert (shapes.lr, shapes.cache) == (0.01, False)   # flags win over the recipe
    assert shapes.time == train.recipe_for("shapes", "repvit", "anchor")["time"] > 0   # epochs fitted to it
    user = train.resolve_args(train.parse_args(["--data", "some/folder", "--epochs", "3"]))
    assert (user.epochs, user.img, user.optimizer, user.nominal_batch, user.cache) == (3, 640, "SGD", 64, False)
    assert user.time is None


@pytest.mark.parametrize("flags, epochs, time", [
    (["--epochs", "4"], 4, None),                       # epochs win over the recipe's budget
    (["--epochs", "4", "--time", "2"], 4, None),        # ... and over a budget given
    (["--time", "2"], None, 2.0),
    (["--data", "some/folder", "--time", "30"], None, 30.0),   # a budget replaces the recipe's 100 epochs
])
def test_epochs_or_a_time_budget(flags, epochs, time):
    args = train.resolve_args(train.parse_args(flags), log=lambda *a: None)
    assert (args.epochs, args.time) == (epochs, time)


def test_epochs_within_a_budget():
    # 100 s: epochs of 18 s; one validation of 6 s at the end, or after every epoch, or every second epoch
    assert engine.epochs_within(100, 18, 6, val_every=0) == 5      # 5 · 18 + 6 = 96
    assert engine.epochs_within(100, 18, 6, val_every=1) == 4      # 4 · 24 = 96; 5 · 24 = 120
    assert engine.epochs_within(100, 18, 6, val_every=2) == 4      # 5 · 18 + 3 · 6 = 108 > 100
    assert engine.epochs_within(23, 18, 6, val_every=0) == 0       # not even one
    assert [engine.validations_in(e, 2) for e in (1, 2, 3, 4)] == [1, 1, 2, 2]


@pytest.mark.parametrize("cores, device, workers", [(2, "cpu", 0), (16, "cpu", 4), (2, "cuda", 2), (64, "cuda", 4)])
def test_default_loader_workers(cores, device, workers, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert train.default_workers(torch.device(device)) == workers


def test_bad_command_lines_fail_clearly(tiny_shapes, tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown backbone 'resnet'.*mobilevit"):
        train.main(["--backbone", "resnet", "--data", str(tiny_shapes)])
    with pytest.raises(SystemExit, match="dataset not found: .*nowhere"):
        train.main(["--data", str(tmp_path / "nowhere"), "--project", str(tmp_path)])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        eval_script.main(["--weights", str(tmp_path / "missing.pt")])
    run_train(tiny_shapes, tmp_path / "runs", "--img", "50")
    out = capsys.readouterr().out
    assert out.count("--img 50 is not a multiple of 32; using 64") == 1


def test_ddp_two_processes_hold_identical_weights(tiny_shapes, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import os, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import train\n"
        "from lightdet.optim import unwrap\n"
        "model, _, _ = train.train(train.parse_args(sys.argv[1:]))\n"
        f"torch.save(unwrap(model).state_dict(), os.path.join({str(tmp_path)!r}, f\"rank{{os.environ['RANK']}}.pt\"))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(script), "--data", str(tiny_shapes), "--img", "64", "--batch", "4", "--epochs", "1",
               "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = build_model("cspdarknet", num_classes=6)
    parameters = [name for name, _ in initial.named_parameters()]   # BatchNorm statistics stay per process
    assert any(not torch.equal(rank0[k], initial.state_dict()[k]) for k in parameters)   # it trained
    for key in parameters:
        assert torch.equal(rank0[key], rank1[key]), key
