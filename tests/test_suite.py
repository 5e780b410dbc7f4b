"""Suite loading: expansion, labels, and one clear error (file + field, exit code 2, no traceback) per mistake."""

from __future__ import annotations

import copy

import pytest

from bench.errors import BenchInputError
from bench.suite import load_suite
from tests.conftest import TINY_SUITE, run_cli, tiny_suite, write_suite


def test_list_values_expand_and_label(tmp_path):
    data = tiny_suite(
        compressions=["none", {"name": "prune", "ratio": [0.3, 0.5]}],
        attacks=[{"name": "pgd", "eps": [0.05, 0.1], "steps": 3}],
    )
    suite = load_suite(write_suite(tmp_path / "s.yaml", data))
    assert [c.label for c in suite.axes["compression"]] == ["none", "prune-0.3", "prune-0.5"]
    assert [c.label for c in suite.axes["attack"]] == ["pgd-0.05", "pgd-0.1"]
    assert suite.axes["compression"][2].config.ratio == 0.5
    # a list-typed parameter is not expanded
    assert suite.axes["model"][0].config.hidden == [32]


def test_entries_differing_in_a_parameter_get_it_in_their_label(tmp_path):
    data = tiny_suite(recipes=[{"name": "standard", "lr": [0.1, 0.01]}])
    suite = load_suite(write_suite(tmp_path / "s.yaml", data))
    assert [c.label for c in suite.axes["recipe"]] == ["standard-lr=0.1", "standard-lr=0.01"]


def test_compression_chain(tmp_path):
    data = tiny_suite(compressions=[[{"name": "prune", "ratio": 0.5}, "int8"]])
    (chain,) = load_suite(write_suite(tmp_path / "s.yaml", data)).axes["compression"]
    assert chain.label == "prune-0.5+int8"
    assert [s.name for s in chain.steps] == ["prune", "int8"]


BAD_SUITES = {
    "unknown model": (tiny_suite(models=["resnet9000"]), "models[0].name", "unknown model 'resnet9000'; valid: mlp"),
    "unknown attack": (tiny_suite(attacks=["cw"]), "attacks[0].name", "unknown attack 'cw'; valid: "),
    "unknown compression": (tiny_suite(compressions=["zip"]), "compressions[0].name", "unknown compression"),
    "unknown runtime": (tiny_suite(runtimes=["tensorrt-lol"]), "runtimes[0].name", "valid: eager, onnxruntime"),
    "unknown dataset": (tiny_suite(dataset="imagenet"), "dataset.name", "unknown dataset 'imagenet'"),
    "wrong type": (
        tiny_suite(recipes=[{"name": "standard", "epochs": "ten"}]),
        "recipes[0].epochs",
        "expected an integer, got 'ten'",
    ),
    "wrong type in list": (
        tiny_suite(measurement={"batch_sizes": [1, "x"]}),
        "measurement.batch_sizes[1]",
        "expected an integer",
    ),
    "ratio out of range": (
        tiny_suite(compressions=[{"name": "prune", "ratio": 1.5}]),
        "compressions[0].ratio",
        "must be in (0, 1), got 1.5",
    ),
    "ratio zero": (tiny_suite(compressions=[{"name": "prune", "ratio": 0}]), "compressions[0].ratio", "(0, 1)"),
    "negative eps": (tiny_suite(attacks=[{"name": "pgd", "eps": -0.1}]), "attacks[0].eps", "must be in [0, inf]"),
    "unknown key in entry": (
        tiny_suite(attacks=[{"name": "pgd", "epsilon": 0.1}]),
        "attacks[0].epsilon",
        "unknown key 'epsilon'; valid keys: eps, alpha",
    ),
    "unknown top-level key": (tiny_suite(modles=["mlp"]), "modles", "unknown key 'modles'"),
    "missing models": ({k: v for k, v in TINY_SUITE.items() if k != "models"}, "models", "missing 'models'"),
    "empty axis": (tiny_suite(runtimes=[]), "runtimes", "non-empty list"),
    "bad profile": (tiny_suite(measurement={"profile": "fast"}), "measurement.profile", "'smoke' or 'dev'"),
    "duplicate entry": (tiny_suite(attacks=["none", "none"]), "attacks", "listed twice"),
    "exclude typo": (tiny_suite(exclude=[{"runtime": "onnx"}]), "exclude[0].runtime", "matches no runtime"),
    "exclude bad axis": (tiny_suite(exclude=[{"backend": "eager"}]), "exclude[0]", "unknown key 'backend'"),
    "int8 not last": (tiny_suite(compressions=[["int8", "prune"]]), "compressions[0][0]", "must be the last step"),
    "resources stage": (tiny_suite(resources={"measure": {"cpus": 2}}), "resources.measure", "unknown stage 'measure'"),
    "resources cpus": (tiny_suite(resources={"train": {"cpus": -1}}), "resources.train.cpus", "must be in [0, inf]"),
    "resources key": (tiny_suite(resources={"train": {"gpu": 1}}), "resources.train.gpu", "valid keys: cpus, gpus"),
    "resources type": (tiny_suite(resources=[1]), "resources", "expected a mapping such as"),
}


def test_resources_place_tasks_without_changing_what_a_cell_measures(tmp_path):
    from bench.rundir import provenance
    from bench.runner import suite_hash

    plain = load_suite(write_suite(tmp_path / "a.yaml", tiny_suite()))
    sized = load_suite(write_suite(tmp_path / "b.yaml", tiny_suite(resources={"train": {"cpus": 0.5, "gpus": 1}})))
    assert (sized.resources.train.cpus, sized.resources.train.gpus) == (0.5, 1)
    assert sized.resources.evaluate.cpus is None  # the default: the threads a local run uses
    assert sized.resolved()["resources"]["train"] == {"cpus": 0.5, "gpus": 1}
    assert suite_hash(plain) == suite_hash(sized)  # a run may be resumed on other resources
    assert provenance(plain.resolved(), {}) == provenance(sized.resolved(), {})


@pytest.mark.parametrize("case", BAD_SUITES, ids=list(BAD_SUITES))
def test_bad_suite_is_one_clear_line_and_exit_2(case, tmp_path, capsys):
    data, field, message = BAD_SUITES[case]
    path = write_suite(tmp_path / "bad.yaml", data)
    code, _out, err = run_cli(["list", path], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert f"{path}: {field}: " in lines[0]
    assert message in lines[0]


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = write_suite(tmp_path / "broken.yaml", "name: x\nmodels: [mlp\nattacks: [none]\n")
    code, _, err = run_cli(["list", path], capsys)
    assert code == 2
    assert f"{path}: line 3, column" in err and "YAML syntax error" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(["run", tmp_path / "nope.yaml", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert err.strip() == f"bench: error: {tmp_path / 'nope.yaml'}: suite file not found"
    assert not (tmp_path / "run").exists()  # nothing written for bad input


def test_load_suite_raises_typed_error(tmp_path):
    with pytest.raises(BenchInputError) as info:
        load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(seed=-1)))
    assert info.value.field == "seed"


def test_shipped_suites_are_valid():
    from pathlib import Path

    from bench.matrix import build_cells

    paths = sorted(Path("suites").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"smoke", "default", "compression", "robustness", "training"}
    for path in paths:
        suite = load_suite(path)
        assert suite.name == path.stem
        assert build_cells(suite)


def test_missing_dataset_files_are_a_user_error_and_nothing_is_written(tmp_path, capsys):
    data = tiny_suite(dataset={"name": "mnist", "root": str(tmp_path / "nodata")})
    path = write_suite(tmp_path / "s.yaml", data)
    code, _, err = run_cli(["run", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache"], capsys)
    assert code == 2
    assert err.startswith(f"bench: error: {path}: dataset: mnist: no data under")
    assert "download: true" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_readme_suite_example_is_valid(tmp_path):
    import re
    from pathlib import Path

    from bench.matrix import build_cells

    block = re.search(r"### A suite\n\n```yaml\n(.*?)```", Path("README.md").read_text(), re.S).group(1)
    cells = build_cells(load_suite(write_suite(tmp_path / "readme.yaml", block)))
    ids = {c.cell_id for c in cells}
    assert "resnet18/standard/none/eager/none" in ids  # added by the include rule
    assert not any(i.startswith("mlp/standard/prune-0.") and "+" not in i for i in ids)  # removed by exclude


def test_an_linf_eps_beyond_the_pixel_range_is_an_input_error(tmp_path, capsys):
    suite = copy.deepcopy(TINY_SUITE) | {"attacks": [{"name": "pgd", "eps": 8}]}
    code, _, err = run_cli(["list", write_suite(tmp_path / "s.yaml", suite)], capsys)
    assert code == 2
    assert "attacks[0].eps: must be at most 1 for Linf (pixels are in [0, 1]; 8/255 is 0.0314), got 8" in err
    assert "Traceback" not in err


def test_numbers_written_as_fractions_are_parsed_exactly_and_labelled_as_written(tmp_path, capsys):
    text = (
        "name: f\nmodels: [mlp]\n"
        "attacks:\n  - {name: pgd, eps: [4/255, 8/255], alpha: 2/255}\n  - {name: fgsm, eps: 0.5 / 10}\n"
    )
    suite = load_suite(write_suite(tmp_path / "f.yaml", text))
    pgd4, pgd8, fgsm = suite.axes["attack"]
    assert (pgd4.label, pgd8.label, fgsm.label) == ("pgd-4/255", "pgd-8/255", "fgsm-0.5/10")
    assert pgd8.config.eps == 8 / 255 and pgd8.config.alpha == 2 / 255 and fgsm.config.eps == 0.05
    code, _out, err = run_cli(["list", write_suite(tmp_path / "bad.yaml", text.replace("8/255", "8/0"))], capsys)
    assert code == 2 and "attacks[0].eps: division by zero in '8/0'" in err
