"""The GitHub Actions workflows: parsed with PyYAML, their structure checked, every file and `bench` command they
use checked against the repository, and the files linted with actionlint (shellcheck checks their `run:` scripts).

actionlint and shellcheck come from the `dev` extra (PyPI wheels that ship the binaries). Without actionlint the
lint test is skipped with the reason, unless BENCH_REQUIRE_ACTIONLINT is set (.ci/run sets it): then it fails.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
NIGHTLY_SUITE = "suites/nightly.yaml"
COMMAND_STARTS = ("&&", "||", "|", ";", "!", "then", "else", "do", "if", "elif", "while", "until", "time")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """The `on:` section (PyYAML reads the bare key `on` as the boolean True, YAML 1.1)."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps") or []


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """The steps of `job` that use `action` (`actions/checkout`), any version."""
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def scripts(workflow: dict[str, Any]) -> list[str]:
    return [s["run"] for job in workflow["jobs"].values() for s in steps(job) if "run" in s]


def without_heredocs(script: str) -> str:
    """The shell of a `run:` script with the bodies of its here-documents (inline Python) removed."""
    out, end = [], None
    for line in script.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        out.append(line)
        match = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if match:
            end = match.group(1)
    return "\n".join(out)


def heredocs(script: str, tag: str) -> list[str]:
    """The bodies of the here-documents `<<'TAG'` of a script."""
    return re.findall(rf"<<-?\s*'{tag}'\n(.*?)\n\s*{tag}\s*$", script, flags=re.S | re.M)


def bench_commands(script: str) -> list[list[str]]:
    """Each `bench ...` command line of a script, as its words (`${{ }}` expressions replaced by a word)."""
    text = re.sub(r"\$\{\{.*?\}\}", "EXPR", without_heredocs(script)).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a line shlex cannot split is no bench command of ours
            continue
        for i, word in enumerate(words):
            if word == "bench" and (i == 0 or words[i - 1] in COMMAND_STARTS):
                commands.append(words[i:])
    return commands


@functools.cache
def cli_help(*subcommand: str) -> str:
    """`bench [SUBCOMMAND] --help`, from the installed harness."""
    cmd = [sys.executable, "-m", "bench.cli", *subcommand, "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd[2:])} failed:\n{done.stderr}"
    return done.stdout


def subcommands() -> set[str]:
    """The subcommands `bench --help` lists: `{run,list,report,...}`."""
    match = re.search(r"\{([\w,-]+)\}", cli_help())
    assert match, f"no subcommand list in `bench --help`:\n{cli_help()}"
    return set(match.group(1).split(","))


# -- every workflow ----------------------------------------------------------------------------------------------


def test_the_workflows_exist():
    assert {f.name for f in WORKFLOW_FILES} >= {"ci.yml", "nightly.yml"}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_shape(path: Path):
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(workflow, dict) and workflow.get("name"), f"{path.name}: no name"
    assert triggers(workflow), f"{path.name}: no `on:` triggers"
    assert workflow.get("permissions"), f"{path.name}: set the token's permissions explicitly"
    jobs = workflow.get("jobs")
    assert isinstance(jobs, dict) and jobs, f"{path.name}: no jobs"
    for name, job in jobs.items():
        assert job.get("runs-on"), f"{path.name}: job {name} has no runs-on"
        assert isinstance(job.get("timeout-minutes"), int), f"{path.name}: job {name} has no timeout-minutes"
        assert steps(job), f"{path.name}: job {name} has no steps"
        for needed in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert needed in jobs, f"{path.name}: job {name} needs an unknown job {needed}"
        for step in steps(job):
            assert ("run" in step) != ("uses" in step), f"{path.name}: job {name}: a step needs run or uses: {step}"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), f"unpinned action {step['uses']}"
            if step.get("run") and ("python" in str(step.get("uses", "")) or "python" in step["run"]):
                for body in heredocs(step["run"], "PY"):
                    compile(body, f"{path.name}: {step.get('name')}", "exec")  # inline Python parses


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_files_the_workflows_use_exist(path: Path):
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    text = "\n".join(scripts(workflow))
    for ref in re.findall(r"(?<![\w/$.-])((?:\.ci|suites|tests|\.github)/[\w./-]+)", text):
        assert (ROOT / ref).exists(), f"{path.name} uses {ref}, which does not exist"
    for job in workflow["jobs"].values():
        for step in uses(job, "actions/setup-python"):
            dep = (step.get("with") or {}).get("cache-dependency-path")
            assert dep is None or (ROOT / dep).exists(), f"{path.name}: cache-dependency-path {dep} does not exist"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_bench_commands_the_workflows_run_exist(path: Path):
    """Every `bench SUBCOMMAND --option` of a workflow is in `bench --help` and `bench SUBCOMMAND --help`."""
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    available = subcommands()
    for script in scripts(workflow):
        for words in bench_commands(script):
            assert len(words) > 1 and words[1] in available, f"{path.name}: `{' '.join(words)}`: not in bench --help"
            options = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
            usage = cli_help(words[1])
            for option in options:
                assert re.search(rf"{re.escape(option)}\b", usage), f"{path.name}: `bench {words[1]}` has no {option}"


# -- ci.yml ------------------------------------------------------------------------------------------------------


def test_ci_runs_dot_ci_run_on_pushes_and_pull_requests():
    workflow = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(workflow))
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    (setup,) = uses(job, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert uses(job, "actions/checkout")
    assert any(re.search(r"(^|\s)(bash\s+)?\.ci/run\b", s) for s in scripts(workflow))
    assert (ROOT / ".ci" / "run").is_file()


# -- nightly.yml -------------------------------------------------------------------------------------------------


def test_nightly_is_scheduled_and_can_be_started_by_hand():
    on = triggers(load("nightly.yml"))
    assert "workflow_dispatch" in on
    (schedule,) = on["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5, f"cron needs 5 fields: {schedule['cron']}"


def test_nightly_shards_run_the_suite_on_gpu_runners_and_upload():
    workflow = load("nightly.yml")
    shard = workflow["jobs"]["shard"]
    labels = shard["runs-on"]
    assert "self-hosted" in labels and "gpu" in labels
    assert shard["strategy"]["fail-fast"] is False
    matrix = shard["strategy"]["matrix"]["shard"]
    n = len(matrix)
    assert matrix == list(range(1, n + 1)), "shards are numbered 1..N"
    (run,) = [w for s in steps(shard) if "run" in s for w in bench_commands(s["run"]) if w[1] == "run"]
    assert NIGHTLY_SUITE in run and (ROOT / NIGHTLY_SUITE).is_file()
    assert run[run.index("--shard") + 1] == f"EXPR/{n}", f"--shard must be matrix.shard/{n}: {run}"
    out = run[run.index("--out") + 1]
    (upload,) = uses(shard, "actions/upload-artifact")
    assert "!cancelled()" in upload["if"] and "failure()" not in upload["if"], "a failed shard still uploads"
    assert out.replace("EXPR", "") in upload["with"]["path"]


def test_nightly_merges_compares_reports_and_fails_on_a_regression():
    workflow = load("nightly.yml")
    merge = workflow["jobs"]["merge"]
    assert merge["needs"] == "shard" or "shard" in merge["needs"]
    assert "!cancelled()" in merge["if"], "merge what there is, also when a shard failed"
    assert merge["permissions"].get("actions") == "read", "downloading the baseline needs actions: read"
    (download,) = uses(merge, "actions/download-artifact")
    assert download["with"]["pattern"] == "nightly-shard-*"
    commands = {w[1]: w for s in steps(merge) if "run" in s for w in bench_commands(s["run"])}
    assert commands["merge"][2].startswith(download["with"]["path"]), "bench merge reads the downloaded shards"
    compare = commands["compare"]
    assert compare[2:4] == ["baseline", "merged"]
    assert "--markdown" in compare and "--json" in compare
    baseline = next(s for s in steps(merge) if s.get("id") == "baseline")
    assert "gh run download" in baseline["run"] and "--status success" in baseline["run"]
    # the first night: no baseline is a notice, not a failure; compare runs only with a baseline
    assert "found=false" in baseline["run"]
    compare_step = next(s for s in steps(merge) if s.get("id") == "compare")
    assert "found == 'true'" in compare_step["if"]
    uploaded = {s["with"]["name"]: s for s in uses(merge, "actions/upload-artifact")}
    assert set(uploaded) == {"nightly-merged", "nightly-compare"}
    assert all("!cancelled()" in s["if"] for s in uploaded.values()), "uploads happen also on a regression"
    summary = "\n".join(s["run"] for s in steps(merge) if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert "compare.md" in summary
    merge_step = next(s for s in steps(merge) if s.get("id") == "merge")
    assert '[ "$rc" -le 1 ]' in merge_step["run"], "exit 1 of bench merge (a failed gate) still compares"
    verdict = steps(merge)[-1]
    assert verdict["name"] == "Verdict", "the verdict comes after every upload"
    assert "!cancelled()" in verdict["if"]
    judged = {v.strip("${} ") for v in verdict["env"].values()}
    assert {"steps.merge.outputs.rc", "steps.compare.outputs.rc"} <= judged, "gates and the comparison both count"
    assert "status=1" in verdict["run"] and 'exit "$status"' in verdict["run"]


def test_nightly_suite_is_the_one_described():
    suite = yaml.safe_load((ROOT / NIGHTLY_SUITE).read_text(encoding="utf-8"))
    assert suite["device"] == "auto"
    assert suite["measurement"]["profile"] == "nightly"
    assert {m if isinstance(m, str) else m["name"] for m in suite["models"]} == {"resnet18", "simple_cnn"}
    compressions = {c if isinstance(c, str) else c["name"] for c in suite["compressions"]}
    assert compressions == {"none", "prune", "int8", "fp16", "qat"}
    providers = [r.get("providers") for r in suite["runtimes"] if isinstance(r, dict) and r["name"] == "onnxruntime"]
    assert ["cpu"] in providers and ["cuda"] in providers
    assert {a if isinstance(a, str) else a["name"] for a in suite["attacks"]} >= {"pgd", "apgd"}
    assert suite.get("gate"), "the nightly gates its cells"


def test_nightly_suite_is_valid():
    """`bench list suites/nightly.yaml` validates the suite (every axis, the gate and the limits) on this machine."""
    cmd = [sys.executable, "-m", "bench.cli", "list", NIGHTLY_SUITE]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\d+ cells: \d+ to run, \d+ skipped$", done.stdout, flags=re.M), done.stdout[-2000:]


# -- actionlint --------------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A tool on PATH, or beside this interpreter (a virtual environment's bin/ that is not on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


def require(name: str) -> str:
    path = find_tool(name)
    if path is None:
        reason = f"{name} not found on PATH or beside {sys.executable}: install the dev extra (pip install -e '.[dev]')"
        if os.environ.get("BENCH_REQUIRE_ACTIONLINT"):
            pytest.fail(f"{reason}; BENCH_REQUIRE_ACTIONLINT is set, so the workflows must be linted")
        pytest.skip(reason)
    return path


def actionlint(*args: str) -> subprocess.CompletedProcess[str]:
    # pyflakes off: its presence varies between machines, and no step of ours runs a `shell: python` script
    cmd = [require("actionlint"), "-no-color", "-oneline", f"-shellcheck={require('shellcheck')}", "-pyflakes=", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_actionlint_finds_nothing_in_the_workflows():
    done = actionlint(*(str(p.relative_to(ROOT)) for p in WORKFLOW_FILES))
    assert done.returncode == 0, f"actionlint:\n{done.stdout}{done.stderr}"


def test_actionlint_and_shellcheck_do_check(tmp_path: Path):
    """The linter is no no-op: a bad expression and an unquoted variable in a run script are both reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope }}\n      - run: rm -rf $DIR/x\n",
        encoding="utf-8",
    )
    done = actionlint(str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "github.nope" in done.stdout or "nope" in done.stdout
    assert "SC2086" in done.stdout, f"shellcheck did not run:\n{done.stdout}"


# -- the KubeRay example (docs/ray.md) ---------------------------------------------------------------------------


def test_the_kuberay_rayjob_runs_a_shipped_suite_with_the_ray_executor():
    job = yaml.safe_load((ROOT / "docs" / "kuberay-rayjob.yaml").read_text(encoding="utf-8"))
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"] and job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    entrypoint = job["spec"]["entrypoint"]
    (words,) = bench_commands(entrypoint.replace("&&", "\n"))
    assert words[1] == "run" and (ROOT / words[2]).is_file()
    usage = cli_help("run")
    for option in (w for w in words[3:] if w.startswith("--")):
        assert re.search(rf"{re.escape(option)}\b", usage), f"bench run has no {option}"
    assert "--executor ray" in entrypoint
