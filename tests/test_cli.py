"""Bad input to train.py, eval.py and predict.py: one clear message each, a sensible skip, never a traceback
and never a half-made run folder."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as eval_script  # noqa: E402  (the repository's eval.py, not the builtin)
import predict  # noqa: E402
import train  # noqa: E402
from lightdet.checkpoint import save_checkpoint  # noqa: E402
from lightdet.data import generate_shapes  # noqa: E402
from lightdet.model import build_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, processes=1)


def random_checkpoint(path, scale="n", backbone="cspdarknet", num_classes=6, data=None):
    """An untrained detector saved as a lightdet checkpoint: enough for eval and predict to run."""
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=num_classes, scale=scale)
    names = [f"c{i}" for i in range(num_classes)]
    save_checkpoint({"model": model.state_dict(), "config": model.config, "names": names,
                     "args": {"data": str(data), "img": 64}}, path)
    return path


@pytest.fixture(scope="module")
def weights(tiny_shapes, tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("weights") / "random.pt", data=tiny_shapes)


def train_args(data, project, *extra):
    return ["--data", str(data), "--img", "64", "--batch", "4", "--epochs", "1", "--workers", "0",
            "--project", str(project), *extra]


def test_predict_skips_unreadable_files_and_goes_on(weights, tmp_path, capsys):
    source = tmp_path / "images"
    source.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(source / "a.jpg")
    Image.fromarray(noise).save(source / "e.jpg")
    (source / "b.jpg").write_bytes(b"")                                              # 0 bytes
    (source / "c.jpg").write_text("not an image at all\n" * 20)                     # a text file
    (source / "d.jpg").write_bytes((source / "a.jpg").read_bytes()[:300])          # truncated JPEG
    out = tmp_path / "out"
    predict.main(["--weights", str(weights), "--source", str(source), "--out", str(out), "--conf", "0.001"])
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "e.jpg"]
    for bad in ("b.jpg", "c.jpg", "d.jpg"):
        assert f"skipped {source / bad}" in printed
    assert "2 images, 3 skipped" in printed
    with pytest.raises(SystemExit, match=r"c\.jpg.*no image could be read"):
        predict.main(["--weights", str(weights), "--source", str(source / "c.jpg"), "--out", str(out)])


@pytest.mark.parametrize("source, message", [("clip.mp4", "videos are not supported"),
                                             ("https://example.com/a.jpg", "URLs are not supported")])
def test_predict_says_what_sources_are_supported(weights, tmp_path, source, message):
    if not source.startswith("http"):
        (tmp_path / source).write_bytes(b"\x00\x00\x00\x18ftypmp42")
        source = str(tmp_path / source)
    with pytest.raises(SystemExit, match=message):
        predict.main(["--weights", str(weights), "--source", source, "--out", str(tmp_path / "out")])


def test_predict_honours_exif_orientation(weights, tmp_path):
    # stored 64 wide and 48 high with orientation 6: shown turned clockwise, 48 wide and 64 high
    ramp = np.stack(np.broadcast_arrays(np.arange(64)[None, :] * 4, np.arange(48)[:, None] * 5, 0), -1)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "phone").mkdir()
    (tmp_path / "upright").mkdir()
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "phone" / "photo.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "phone" / "photo.jpg") as stored:   # the decoded pixels, turned by hand
        stored.convert("RGB").transpose(Image.ROTATE_270).save(tmp_path / "upright" / "photo.png")
    for name in ("phone", "upright"):
        predict.main(["--weights", str(weights), "--source", str(tmp_path / name),
                      "--out", str(tmp_path / f"out_{name}"), "--conf", "0.001", "--save-txt"])
    with Image.open(tmp_path / "out_phone" / "photo.jpg") as drawn:
        assert drawn.size == (48, 64)
    phone = (tmp_path / "out_phone" / "labels" / "photo.txt").read_text()
    assert phone and phone == (tmp_path / "out_upright" / "labels" / "photo.txt").read_text()


def test_eval_rounds_the_image_size_like_train(weights, tiny_shapes, capsys):
    metrics = eval_script.main(["--weights", str(weights), "--data", str(tiny_shapes), "--img", "100",
                                "--workers", "0"])
    assert "--img 100 is not a multiple of 32; using 128" in capsys.readouterr().out
    assert 0 <= metrics["mAP50"] <= 1


def test_an_empty_checkpoint_is_named_not_a_traceback(tiny_shapes, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for run in (lambda: eval_script.main(["--weights", str(empty)]),
                lambda: predict.main(["--weights", str(empty), "--source", str(tiny_shapes / "images" / "val")]),
                lambda: train.main(train_args(tiny_shapes, tmp_path / "runs", "--weights", str(empty))),
                lambda: train.main(["--resume", str(empty)])):
        with pytest.raises(SystemExit, match=r"empty\.pt is empty \(0 bytes\)"):
            run()


@pytest.mark.parametrize("script, flags, message", [
    ("train", ["--epochs", "-1"], "--epochs: must be at least 1, got -1"),
    ("train", ["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    ("train", ["--img", "0"], "--img: must be at least 32, got 0"),
    ("train", ["--batch", "0"], "--batch: must be at least 1, got 0"),
    ("train", ["--lr", "-0.1"], "--lr: must be above 0, got -0.1"),
    ("train", ["--workers", "-2"], "--workers: must be at least 0, got -2"),
    ("eval", ["--batch", "0"], "--batch: must be at least 1, got 0"),
    ("eval", ["--img", "0"], "--img: must be at least 32, got 0"),
    ("eval", ["--conf", "1.5"], "--conf: must be between 0 and 1, got 1.5"),
    ("predict", ["--img", "-64"], "--img: must be at least 32, got -64"),
    ("predict", ["--max-det", "0"], "--max-det: must be at least 1, got 0"),
])
def test_numbers_are_checked_before_anything_runs(script, flags, message, weights, tiny_shapes, tmp_path, capsys):
    argv = {"train": train_args(tiny_shapes, tmp_path / "runs"),
            "eval": ["--weights", str(weights), "--data", str(tiny_shapes)],
            "predict": ["--weights", str(weights), "--source", str(tiny_shapes / "images" / "val")]}[script]
    main = {"train": train.main, "eval": eval_script.main, "predict": predict.main}[script]
    with pytest.raises(SystemExit) as stop:
        main(argv + flags)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"),
                                             ("gpu", "unknown device 'gpu'"),
                                             ("cuda:7", "CUDA is not available")])
def test_devices_that_do_not_exist_are_named(device, message, weights, tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # a CUDA machine gets the CPU-only answer
    for run in (lambda: train.main(train_args(tiny_shapes, tmp_path / "runs", "--device", device)),
                lambda: eval_script.main(["--weights", str(weights), "--device", device]),
                lambda: predict.main(["--weights", str(weights), "--source", str(tiny_shapes), "--device", device])):
        with pytest.raises(SystemExit, match=f"{message}.*available here: cpu"):
            run()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("other", [dict(scale="s"), dict(backbone="mobilenetv3")])
def test_weights_of_another_architecture_give_one_message(other, tiny_shapes, tmp_path):
    foreign = random_checkpoint(tmp_path / "foreign.pt", **other)
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(tiny_shapes, tmp_path / "runs", "--weights", str(foreign)))
    message = str(stop.value.code)
    described = "cspdarknet scale s" if "scale" in other else "mobilenetv3 scale n"
    assert f"holds a {described}" in message and "this run builds a cspdarknet scale n" in message
    assert len(message) < 400 and "size mismatch" not in message
    assert not (tmp_path / "runs").exists()


def test_failed_starts_leave_no_run_folder(tiny_shapes, tmp_path):
    project = tmp_path / "runs"
    broken = tmp_path / "broken"
    (broken / "images" / "train").mkdir(parents=True)
    (broken / "images" / "train" / "x.jpg").write_text("not an image")
    (broken / "classes.txt").write_text("a\n")
    for argv in (train_args(tiny_shapes, project, "--scale", "q"),
                 train_args(tiny_shapes, project, "--batch", "0"),
                 train_args(tiny_shapes, project, "--device", "gpu"),
                 train_args(tiny_shapes, project, "--box-loss", "l1"),
                 train_args(broken, project)):
        with pytest.raises(SystemExit):
            train.main(argv)
    assert not project.exists() or not any(project.iterdir())
    _, _, run_dir = train.train(train.parse_args(train_args(tiny_shapes, project)))
    assert run_dir == project / "exp"


@pytest.mark.parametrize("parse", [train.parse_args, eval_script.parse_args, predict.parse_args,
                                   "benchmark"])
def test_help_tells_every_flag_and_no_none_default(parse, capsys):
    from lightdet import benchmark
    with pytest.raises(SystemExit):
        benchmark.main(["--help"]) if parse == "benchmark" else parse(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    lines = text.split("options:")[1].splitlines() + [""]
    for line, below in zip(lines, lines[1:]):   # argparse puts help at column 24, or on the next line
        if line.startswith("  -"):
            assert (line[22:24].isspace() and line[24:].strip()) or below.startswith(" " * 24), line
    if parse is train.parse_args:
        assert "default: shapes 160-256 by backbone, shapes-hard 320, others 640" in " ".join(text.split())


def test_predict_numbers_its_runs_and_writes_what_is_asked(weights, tiny_shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = str(tiny_shapes / "images" / "val" / "000000.jpg")
    predict.main(["--weights", str(weights), "--source", source, "--conf", "0.001"])
    predict.main(["--weights", str(weights), "--source", source, "--conf", "0.001", "--nosave", "--save-txt",
                  "--classes", "2", "4", "--max-det", "5"])
    first, second = Path("runs/predict/exp"), Path("runs/predict/exp2")
    assert [p.name for p in first.iterdir()] == ["000000.jpg"]                  # drawn image only, by default
    assert [p.name for p in second.iterdir()] == ["labels"]                     # --nosave --save-txt
    rows = [line.split() for line in (second / "labels" / "000000.txt").read_text().splitlines()]
    assert 0 < len(rows) <= 5 and {row[0] for row in rows} <= {"2", "4"} and all(len(r) == 6 for r in rows)
    printed = capsys.readouterr().out
    assert "1/1" in printed and " ms" in printed and "1 image, 0 skipped" in printed
    with pytest.raises(SystemExit, match="--classes 9: the model has 6 classes"):
        predict.main(["--weights", str(weights), "--source", source, "--classes", "9"])


def test_predict_summary_counts_classes():
    detections = torch.tensor([[0, 0, 1, 1, 0.9, 1], [0, 0, 1, 1, 0.8, 1], [0, 0, 1, 1, 0.7, 0],
                               [0, 0, 1, 1, 0.6, 1], [0, 0, 1, 1, 0.5, 2]])
    assert predict.summary(detections, ["cross", "circle", "star"]) == "3 circles, 1 cross, 1 star"
    assert predict.summary(detections[:0], ["a"]) == "no detections"
    assert predict.plural(2, "cross") == "2 crosses"


def test_benchmark_rounds_the_size_and_writes_csv_only_when_asked(tmp_path, monkeypatch, capsys):
    from lightdet import benchmark
    monkeypatch.chdir(tmp_path)
    rows = benchmark.main(["cspdarknet_n", "--img", "100", "--runs", "1", "--warmup", "0"])
    assert "--img 100 is not a multiple of 32; using 128" in capsys.readouterr().out
    assert rows[0]["model"] == "cspdarknet_n" and not list(tmp_path.rglob("*.csv"))
    benchmark.main(["cspdarknet_n", "--img", "64", "--runs", "1", "--warmup", "0", "--csv", "out/b.csv"])
    assert (tmp_path / "out" / "b.csv").read_text().startswith("model,")


def test_benchmark_measures_training_at_the_recipe_size_and_bf16_only_where_native(monkeypatch, capsys):
    from lightdet import benchmark
    assert benchmark.training_images_per_second({"backbone": "cspdarknet_n"}, 64, 2, True, runs=1, warmup=0) > 0
    measured = []
    monkeypatch.setattr(benchmark, "training_images_per_second",
                        lambda kwargs, size, batch, amp, runs, warmup:
                        measured.append((kwargs["backbone"], size, amp)) or 10.0 * (1 + amp))
    monkeypatch.setattr(benchmark, "native_bf16", lambda: True)
    rows = benchmark.main(["--part", "train", "repvit", "mobilevit_xxs"])
    assert measured == [("repvit", 160, False), ("repvit", 160, True), ("mobilevit_xxs", 192, False),
                        ("mobilevit_xxs", 192, True)]
    assert rows[0]["bf16_speedup"] == 2.0 and "| repvit | 160 | 10.00 | 20.00 | 2.00 |" in capsys.readouterr().out
    monkeypatch.setattr(benchmark, "native_bf16", lambda: False)
    rows = benchmark.main(["--part", "train", "cspdarknet_n", "--img", "64"])
    assert "no native bfloat16" in capsys.readouterr().out and set(rows[0]) == {"model", "img", "fp32_img_s"}
