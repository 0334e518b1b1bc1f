"""The product surface after a search: report (HTML + figures), fine-tune, export, and the report in a browser."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from autoprune import cli
from autoprune.report import FIGURES, build_report, pareto_front

SMOKE = {"model": {"name": "resnet20", "train_epochs": 0.5}, "data": {"name": "digits", "val_size": 200},
         "budget": {"flops": 0.5}, "search": {"backend": "random", "evaluations": 8},
         "evaluation": {"val_size": 200, "bn_batches": 1}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(SMOKE))
    assert cli.main(["search", str(config), "--run-dir", str(root / "run"), "--quiet", "--no-report"]) == 0
    return root / "run"


def test_pareto_front_keeps_only_undominated_points():
    points = [(0.5, 0.80), (0.4, 0.70), (0.45, 0.60), (0.3, 0.75), (0.6, 0.79)]
    assert pareto_front(points) == [3, 0]


def test_report_is_one_self_contained_file_with_its_figures(run_dir):
    page = build_report(run_dir, latency_repeats=3).read_text()
    for name in FIGURES:
        assert (run_dir / name).stat().st_size > 10_000, name
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "http://" not in page and "https://" not in page and 'src="file:' not in page
    for text in ("latency, torch", "latency, onnxruntime", "Channels kept per group", "Pareto", ">met<",
                 "not run yet", "validation accuracy (refitted by least squares, as searched)"):  # the default
        assert text in page, text
    latency = json.loads((run_dir / "latency.json").read_text())
    assert all(latency[rt][m] > 0 for rt in ("torch", "onnxruntime") for m in ("dense", "pruned"))
    assert latency["rounds"] == 5 and "(medians of 5 rounds)" in page  # one round can read points off
    for rt in ("torch", "onnxruntime"):  # the measured speed-up stands next to the FLOPs ratio
        speed = latency[rt]["dense"] / latency[rt]["pruned"]
        assert f"({speed:.2f}× {'faster' if speed >= 1 else 'as fast'})" in page


def test_finetune_then_export_then_report(run_dir, capsys):
    assert cli.main(["finetune", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    record = json.loads((run_dir / "finetune.json").read_text())
    tuned = record["runs"][-1]
    assert tuned["test_accuracy"] > tuned["test_accuracy_before"]  # 2 epochs recover a 50%-FLOPs digits net
    assert record["shipped"] == tuned["file"] == "finetuned-1.pt" and (run_dir / "finetuned-1.pt").exists()
    # a second fine-tune that ends worse (a learning rate that wrecks the net) is kept, but not shipped
    shipped_before = (run_dir / "finetuned.pt").read_bytes()
    assert cli.main(["finetune", str(run_dir), "--epochs", "0.3", "--lr", "20", "--quiet"]) == 0
    record = json.loads((run_dir / "finetune.json").read_text())
    assert [r["file"] for r in record["runs"]] == ["finetuned-1.pt", "finetuned-2.pt"]
    assert record["runs"][1]["val_accuracy"] < record["runs"][0]["val_accuracy"]
    assert record["shipped"] == "finetuned-1.pt" and (run_dir / "finetuned.pt").read_bytes() == shipped_before
    assert "not shipped" in capsys.readouterr().out
    assert cli.main(["export", str(run_dir), "--format", "torch", "onnx"]) == 0
    exported = json.loads((run_dir / "export.json").read_text())
    for fmt, name in (("torch", "model.pt2"), ("onnx", "model.onnx")):
        entry = exported[fmt]
        assert entry["source"] == "finetuned.pt" and entry["path"] == f"export/{name}"
        assert (run_dir / entry["path"]).exists() and entry["max_abs_error"] <= 1e-4 and entry["latency_ms"] > 0
    page = (run_dir / "report.html").read_text()  # finetune rewrote the report
    assert "fine-tune finetuned-1.pt (2 epoch(s), lr 0.05) &mdash; shipped" in page
    assert "finetuned-2.pt (0.3 epoch(s), lr 20)" in page
    assert "Exported models" in build_report(run_dir).read_text()


def test_the_exported_torch_program_loads_without_autoprune(run_dir):
    if not (run_dir / "export" / "model.pt2").exists():
        cli.main(["export", str(run_dir), "--format", "torch"])
    code = ("import sys, torch; sys.modules['autoprune'] = None; "
            f"m = torch.export.load({str(run_dir / 'export' / 'model.pt2')!r}).module(); "
            "print(tuple(m(torch.zeros(3, 1, 8, 8)).shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(3, 10)", out.stderr[-500:]


@pytest.mark.parametrize("command", ["report", "finetune", "export"])
def test_commands_on_a_folder_without_a_run_exit_2(command, tmp_path, capsys):
    assert cli.main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no run" in err and "\n" not in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make test installs Debian's chromium)")
def test_report_renders_in_headless_chromium_with_its_plots(run_dir, tmp_path):
    from matplotlib.image import imread

    page = build_report(run_dir, latency_repeats=3)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,3200", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3200, 1100)
    # the plots' blue bars and points: a page of text alone has almost no saturated blue
    blue = (pixels[..., 2] > 0.55) & (pixels[..., 0] < 0.35)
    assert blue.mean() > 0.01
