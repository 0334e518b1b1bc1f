import json
import os
import subprocess
import sys

import pytest

from autoprune import cli
from autoprune.data import datasets as ds
from autoprune.models.checkpoints import REFERENCE_DIR


def test_help_works_for_every_command():
    commands = ("train", "demo", "search", "resume", "report", "finetune", "export", "experiment", "pruningnet")
    for args in (["--help"], *([c, "--help"] for c in commands)):
        out = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True)
        assert out.returncode == 0 and "example" in out.stdout


def test_unknown_command_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", "prune-everything"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_bad_model_name_is_one_line_exit_2(capsys, tmp_path):
    assert cli.main(["train", "--model", "resnet18", "--dataset", "digits", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error: unknown model 'resnet18'") and "\n" not in err


def test_missing_dataset_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.delenv(ds.FASHION_MNIST_ENV, raising=False)
    assert cli.main(["demo", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install -y dataset-fashion-mnist" in err and "\n" not in err


def test_train_writes_a_loadable_checkpoint(tmp_path):
    from autoprune.models.checkpoints import load_checkpoint

    out = tmp_path / "digits.pt"
    assert cli.main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--val-size", "200",
                     "--out", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert meta["model"] == "mlp" and 0.5 < meta["test_accuracy"] <= 1.0


@pytest.mark.skipif(not (REFERENCE_DIR / "resnet20_fashion_mnist.pt").exists()
                    or not (ds.FASHION_MNIST_DEBIAN_DIR.exists() or os.environ.get(ds.FASHION_MNIST_ENV)),
                    reason="needs Fashion-MNIST (make test installs it) and the reference checkpoint")
def test_demo_searches_exports_and_reports_within_budget(tmp_path):
    assert cli.main(["demo", "--run-dir", str(tmp_path), "--evaluations", "6", "--val-size", "500",
                     "--bn-batches", "2", "--quiet", "--threads", "1"]) == 0  # 1: xdist runs two tests
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["meets_budget"] and summary["evaluations"] == 6
    assert summary["pruned"]["flops"] <= 0.5 * summary["dense"]["flops"]
    assert summary["dense"]["test_accuracy"] >= 0.925 and summary["pruned"]["test_accuracy"] > 0.5
    exported = json.loads((tmp_path / "export.json").read_text())["onnx"]
    assert exported["max_abs_error"] <= 1e-4 and (tmp_path / "export" / "model.onnx").exists()
    assert (tmp_path / "report.html").exists() and (tmp_path / "pruned.pt").exists()


def test_progress_degrades_to_log_lines_and_can_be_silenced(capsys):
    from autoprune.progress import track_progress

    with track_progress("work", 3, log_every_s=0.0) as task:
        for _ in range(3):
            task.advance(1, loss=0.5)
    err = capsys.readouterr().err
    assert "work: 3/3 loss 0.5" in err  # not a TTY under pytest: plain lines
    with track_progress("quiet", 3, enabled=False) as task:
        task.advance(3)
    assert capsys.readouterr().err == ""


def test_the_progress_bar_fits_80_columns_with_elapsed_time_and_eta():
    import io
    import re

    from rich.console import Console
    from rich.progress import Progress

    from autoprune.progress import bar_columns

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with Progress(*bar_columns(), console=console, auto_refresh=False) as bar:
        task = bar.add_task("evolution search", total=300, info="")
        bar.update(task, advance=123, info="best 0.8812  phase refit of the best policy, then the report")
        bar.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the terminal's control sequences
    lines = [line for line in text.replace("\r", "\n").splitlines() if "search" in line]
    assert lines and all(len(line) <= 80 for line in lines)
    assert "123/300" in lines[-1] and "eta" in lines[-1] and "0:00:00" in lines[-1]


@pytest.mark.parametrize("bad", ["model: {name: resnet2000}", "reward: nope", "search: {backend: foo}",
                                 "budget: {flops: -1}"])
def test_config_errors_are_found_before_torch_is_imported(tmp_path, bad):
    # heavy imports come after parsing, so an input error prints at once (not after ~2 s of torch)
    path = tmp_path / "c.yaml"
    path.write_text(bad + "\n")
    code = ("import sys\nfrom autoprune.cli import main\n"
            "code = main(['search', sys.argv[1], '--run-dir', sys.argv[2]])\n"
            "print('torch' in sys.modules)\nsys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout.strip() == "False", out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
