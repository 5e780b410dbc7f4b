"""A user's own model is measured as it is: the cache follows edits of its code and of its checkpoint, no
normalisation is added unless asked for, and a checkpoint trained outside the harness keeps its accuracy inside it.
Each run is the real CLI in a fresh interpreter (an edited module must be read again, as in a user's next run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from torch import nn

from bench import jsonl
from bench.datasets import DigitsConfig, load_digits
from tests.conftest import bench_cli, records

LAYERS = """
from torch import nn


def pool():
    return nn.MaxPool2d(2)
"""

CNN = """
from torch import nn

from mymodels.layers import pool


def tiny_cnn(num_classes, in_shape, width=8):
    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU(), pool(), nn.Flatten(),
                         nn.Linear(width * (in_shape[1] // 2) * (in_shape[2] // 2), num_classes))
"""

DATASET = {"name": "digits", "eval_size": 200, "calibration_size": 32}


def write_project(root: Path) -> Path:
    (root / "mymodels").mkdir(parents=True)
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "layers.py").write_text(LAYERS)
    (root / "mymodels" / "cnn.py").write_text(CNN)
    return root


def suite(root: Path, model: dict, recipe: dict | None = None) -> Path:
    data = {
        "name": "mine",
        "dataset": DATASET,
        "models": [model],
        "recipes": [recipe or {"name": "none"}],
        "compressions": ["none"],
        "runtimes": ["eager"],
        "attacks": ["none"],
        "measurement": {"profile": "smoke", "batch_sizes": [1], "memory": False},
    }
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def the_tiny_cnn(width: int = 8, pool: type[nn.Module] = nn.MaxPool2d) -> nn.Module:
    """The network of CNN above, built here (as a user's own training script would)."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), pool(2), nn.Flatten(), nn.Linear(width * 16, 10))


def train_outside(seed: int, epochs: int = 30) -> tuple[nn.Module, float]:
    """Train on the harness's own digits split with a bare loop on [0, 1] pixels; accuracy on its eval split."""
    splits = load_digits(DigitsConfig(**{k: v for k, v in DATASET.items() if k != "name"}), seed=0)
    torch.manual_seed(seed)
    net = the_tiny_cnn()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, len(splits.x_train), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(splits.x_train[i : i + 64]), splits.y_train[i : i + 64]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(splits.x_eval).argmax(1) == splits.y_eval).sum().item() / len(splits.y_eval)
    return net, accuracy


def stage_hits(run_dir: Path) -> dict[str, bool]:
    return {s["kind"]: s["cache_hit"] for s in jsonl.read(run_dir / "stages.jsonl")}


def run(project: Path, suite_path: Path, out: str, cwd: Path) -> dict:
    done = bench_cli(["run", suite_path, "--out", project / out, "--cache", project / "cache", "--no-progress"], cwd)
    assert done.returncode == 0, done.stderr
    (record,) = records(project / out).values()
    assert record["status"] == "ok", record.get("error")
    return record


def test_a_checkpoint_trained_outside_keeps_its_accuracy_and_the_cache_follows_every_edit(tmp_path):
    project = write_project(tmp_path / "project")
    net, accuracy = train_outside(seed=0)
    torch.save(net.state_dict(), project / "weights.pt")
    # a relative checkpoint path is relative to the suite file, and the run starts elsewhere
    suite_path = suite(project, {"name": "mymodels.cnn:tiny_cnn", "checkpoint": "weights.pt"})
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "bench").mkdir(parents=True)  # a folder named bench where the user stands changes nothing

    first = run(project, suite_path, "first", elsewhere)
    assert first["model"]["normalize"] is False  # a checkpoint gets [0, 1] pixels, as it was trained on
    assert first["clean_accuracy"] == accuracy  # the same samples, the same weights: exactly its own accuracy
    assert first["model"]["checkpoint"] == str((project / "weights.pt").resolve())
    sha = hashlib.sha256((project / "weights.pt").read_bytes()).hexdigest()
    assert first["model"]["checkpoint_sha256"] == sha

    again = run(project, suite_path, "again", elsewhere)  # nothing changed: every stage from the cache
    assert all(stage_hits(project / "again").values())
    assert again["clean_accuracy"] == accuracy

    # the checkpoint overwritten with other weights: the model and everything after it recomputed, data kept
    other, other_accuracy = train_outside(seed=1, epochs=3)
    torch.save(other.state_dict(), project / "weights.pt")
    retrained = run(project, suite_path, "overwritten", elsewhere)
    hits = stage_hits(project / "overwritten")
    assert hits["data"] and not hits["train"] and not hits["evaluate"] and not hits["measure"]
    assert retrained["clean_accuracy"] == other_accuracy != accuracy
    assert retrained["model"]["checkpoint_sha256"] != sha
    assert retrained["settings_hash"]["model"] != first["settings_hash"]["model"]

    # the model's code edited in a module it imports from the user's package (MaxPool -> AvgPool)
    (project / "mymodels" / "layers.py").write_text(LAYERS.replace("MaxPool2d", "AvgPool2d"))
    edited = run(project, suite_path, "edited", elsewhere)
    hits = stage_hits(project / "edited")
    assert hits["data"] and not hits["train"] and not hits["evaluate"]
    assert edited["model"]["source_sha256"] != retrained["model"]["source_sha256"]
    avg = the_tiny_cnn(pool=nn.AvgPool2d)
    avg.load_state_dict(other.state_dict())
    splits = load_digits(DigitsConfig(**{k: v for k, v in DATASET.items() if k != "name"}), seed=0)
    with torch.no_grad():
        expected = (avg(splits.x_eval).argmax(1) == splits.y_eval).sum().item() / len(splits.y_eval)
    assert edited["clean_accuracy"] == expected  # the edited code ran, not the cached model


def test_normalisation_is_explicit(tmp_path):
    project = write_project(tmp_path / "project")
    listed = bench_cli(["list", suite(project, {"name": "mymodels.cnn:tiny_cnn"})], cwd=tmp_path)
    assert "model mymodels.cnn:tiny_cnn: normalize=false ([0, 1] pixels as they are)" in listed.stdout
    asked = suite(project, {"name": "mymodels.cnn:tiny_cnn", "normalize": True})
    listed = bench_cli(["list", asked], cwd=tmp_path)
    assert "normalize=true (dataset mean/std normalisation inside the model)" in listed.stdout
    builtin = suite(project, "simple_cnn")  # the harness's own models, trained by it, keep the normalisation
    assert "model simple_cnn: normalize=true" in bench_cli(["list", builtin], cwd=tmp_path).stdout
