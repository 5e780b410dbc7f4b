"""Plugins are discovered: a new file in an axis package, or a module named by a `bench.plugins` entry point of an
installed distribution, is usable from a suite with no other edit; user models beside the suite import without
sys.path edits. Each end-to-end case runs the real CLI in a fresh interpreter, as a user would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import bench
from bench.registry import Registry
from tests.conftest import bench_cli, records

# One tiny cell per case: a few seconds of training and measurement.
TINY = {
    "name": "plugin",
    "dataset": {"name": "digits", "eval_size": 60, "calibration_size": 16},
    "models": [{"name": "mlp", "hidden": [16]}],
    "recipes": [{"name": "standard", "epochs": 2}],
    "compressions": ["none"],
    "runtimes": ["eager"],
    "attacks": ["none"],
    "measurement": {"profile": "smoke", "batch_sizes": [1], "memory": False},
}


def write_suite(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


NEW_ATTACK = '''
"""`sign_noise`: a random vertex of the Linf ball, queried once (a test plugin)."""
import dataclasses

import torch

from bench.attacks import ATTACKS, Attack, LinfConfig


@dataclasses.dataclass
class SignNoiseConfig(LinfConfig):
    pass


@ATTACKS.register("sign_noise", config=SignNoiseConfig, kind="query", primary="eps")
class SignNoise(Attack):
    def perturb(self, model, x, y, generator):
        signs = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
        return (x + self.eps * signs).clamp(0, 1)
'''


def test_a_new_attack_file_is_usable_from_a_suite_with_no_other_edit(tmp_path):
    # a copy of the package with one more file, and nothing else changed
    copy = tmp_path / "src"
    shutil.copytree(Path(bench.__file__).parent, copy / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "bench" / "attacks" / "sign_noise.py").write_text(NEW_ATTACK)
    suite = write_suite(tmp_path / "suite.yaml", attacks=["none", {"name": "sign_noise", "eps": 0.3}])

    listed = bench_cli(["list", suite], cwd=tmp_path, pythonpath=copy)
    assert listed.returncode == 0, listed.stderr
    assert "mlp/standard/none/eager/sign_noise-0.3" in listed.stdout

    done = bench_cli(["run", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"],
                     cwd=tmp_path, pythonpath=copy)  # fmt: skip
    assert done.returncode == 0, done.stderr
    cells = records(tmp_path / "run")
    noisy = cells["mlp/standard/none/eager/sign_noise-0.3"]
    assert noisy["status"] == "ok"
    assert noisy["threat_model"] == "black-box"  # from the declared kind, not from the name
    assert noisy["robust_accuracy"] <= noisy["clean_accuracy"]
    assert noisy["clean_accuracy"] == cells["mlp/standard/none/eager/none"]["clean_accuracy"]


ENTRY_POINT_PLUGIN = '''
"""A compression from a separately installed package: weights rounded to 2 decimals (a test plugin)."""
import dataclasses

import torch

from bench.compressions import COMPRESSIONS, Compressed


@dataclasses.dataclass
class RoundConfig:
    decimals: int = 2


@COMPRESSIONS.register("round_weights", config=RoundConfig, dtype="fp32", primary="decimals")
def round_weights(model, cfg, ctx):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p, decimals=cfg.decimals))
    return Compressed(model, meta={"rounded_to": cfg.decimals})
'''


def install_fake_distribution(site: Path, module: str, source: str) -> None:
    """What `pip install` leaves behind for a package declaring a `bench.plugins` entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module.replace('_', '-')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench.plugins]\nmine = {module}\n")


def test_a_plugin_from_an_installed_distribution_adds_a_compression(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, "my_bench_plugins", ENTRY_POINT_PLUGIN)
    suite = write_suite(tmp_path / "suite.yaml", compressions=["none", {"name": "round_weights", "decimals": 1}])

    done = bench_cli(["run", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"],
                     cwd=tmp_path, pythonpath=site)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rounded = records(tmp_path / "run")["mlp/standard/round_weights-1/eager/none"]
    assert rounded["status"] == "ok"
    assert rounded["compression_steps"][0]["rounded_to"] == 1
    assert rounded["compression"] == {"name": "round_weights", "decimals": 1}

    # without the distribution the name is unknown, and the error lists what is registered
    missing = bench_cli(["list", suite], cwd=tmp_path)
    assert missing.returncode == 2
    assert "unknown compression 'round_weights'; valid:" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_broken_entry_point_is_reported_and_the_rest_still_loads(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, "broken_plugin", "raise ImportError('missing dependency: foo')\n")
    suite = write_suite(tmp_path / "suite.yaml")
    listed = bench_cli(["list", suite], cwd=tmp_path, pythonpath=site)
    assert listed.returncode == 0, listed.stderr
    assert "bench plugin 'mine' (broken_plugin) failed to load: missing dependency: foo" in listed.stderr
    assert "1 cells: 1 to run" in listed.stdout


USER_MODEL = """
from torch import nn


def tiny_cnn(num_classes, in_shape, width=4):
    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))
"""


def test_a_user_model_beside_the_suite_imports_from_any_working_directory(tmp_path):
    project = tmp_path / "project"
    (project / "mymodels").mkdir(parents=True)
    (project / "mymodels" / "__init__.py").write_text("")
    (project / "mymodels" / "cnn.py").write_text(USER_MODEL)
    suite = write_suite(project / "suite.yaml", models=[{"name": "mymodels.cnn:tiny_cnn", "kwargs": {"width": 4}}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = bench_cli(["run", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"],
                     cwd=elsewhere)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (cell,) = records(tmp_path / "run").values()
    assert cell["status"] == "ok", cell.get("error")
    assert cell["latency_ms"]["1"]["p50"] > 0  # the measurement worker unpickled the user's model too

    write_suite(project / "typo.yaml", models=["mymodelz.cnn:tiny_cnn"])
    missing = bench_cli(["list", project / "typo.yaml"], cwd=elsewhere)
    assert missing.returncode == 2
    assert f"no module 'mymodelz' among the installed packages nor {project.resolve()}" in missing.stderr


def test_discovery_imports_every_module_of_the_axis_package_once(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_axis"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from bench.registry import Registry\nREG = Registry('thing', package='fake_axis')\n"
    )
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(f"from fake_axis import REG\nREG.register('{name}')(object)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('modules starting with _ are not plugins')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_axis

    registry: Registry = fake_axis.REG
    assert registry.names() == ["alpha", "beta"]
    assert registry.names() == ["alpha", "beta"]  # a second read imports nothing twice (no "registered twice")


def test_a_plugin_declaring_an_unknown_attack_kind_is_refused_when_it_registers():
    from bench.attacks import ATTACKS

    with pytest.raises(ValueError, match="attack 'odd' declares kind='gradiant'; expected one of 'gradient', 'query'"):
        ATTACKS.register("odd", kind="gradiant")
    assert "odd" not in ATTACKS
