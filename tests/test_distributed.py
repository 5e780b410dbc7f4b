"""Distributed recipes on digits: `ddp` (torchrun + DDP) and `fedavg` (simulated and torchrun clients).

The torchrun launches (about 10 s each on two cores, most of it process start) are shared through module fixtures:
four `ddp` launches and one `fedavg` launch, all through `bench.launch`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from bench import launch, userimport
from bench.config import parse_config
from bench.datasets import load_dataset
from bench.errors import ConfigError
from bench.inference import accuracy
from bench.models import MODELS, build_model
from bench.recipes import RECIPES
from bench.recipes.distributed import GlobalBatches, resolve_backend
from bench.recipes.federated import client_shards, compress_update
from bench.training import OptimConfig, fit, summed_cross_entropy

# AdamW at 1e-2 learns digits in a few epochs (as in test_recipes.py).
ADAMW = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread_everywhere(one_thread):
    """One intra-op thread here and in every torchrun worker: tiny models, a busy two-core machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the recipes pass the environment on to torchrun
        yield


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, 0)


def _subset(data, n):
    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


def _model(data, name="simple_cnn", **params):
    torch.manual_seed(0)  # the same initial weights for every run, as the pipeline does
    params = params or {"width": 8, "hidden": 32}
    cfg = parse_config(MODELS.get(name).config_cls, params)
    return build_model(name, cfg, data.num_classes, data.in_shape, data.mean, data.std)


def _train(recipe, params, data, model=None, seed=0):
    entry = RECIPES.get(recipe)
    model = model if model is not None else _model(data)
    cost = entry.obj(model, data, parse_config(entry.config_cls, params), seed=seed, device="cpu")
    return model.eval(), cost


def _max_diff(a, b):
    """Max abs difference over every state_dict entry (parameters and BatchNorm statistics)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


# --- ddp -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_cnn(data):
    """simple_cnn, 3 epochs of the full train split (1,397 samples, 66 steps of 64), on 2 and on 1 process."""
    params = {**ADAMW, "epochs": 3, "batch_size": 64}
    return {ws: _train("ddp", {**params, "world_size": ws}, data) for ws in (2, 1)}


@pytest.fixture(scope="module")
def ddp_resnet(data):
    """resnet18 width 4 (BatchNorm -> synchronised BatchNorm), 249 samples in global batches of 32 (8 steps).

    249 = 7 * 32 + 25: the last batch splits 13 / 12 between the ranks, which the loss scaling must handle.
    lr 0.01: at 0.05 this tiny ResNet is so ill-conditioned that reordering a batch in one process already moves
    weights by 1e-3, which says nothing about DDP.
    """
    small = _subset(data, 249)
    params = {"epochs": 1, "batch_size": 32, "lr": 0.01}
    return {
        ws: _train("ddp", {**params, "world_size": ws}, small, model=_model(small, "resnet18", width=4))
        for ws in (2, 1)
    }


def test_ddp_two_processes_give_the_weights_of_one(ddp_cnn):
    (two, cost2), (one, cost1) = ddp_cnn[2], ddp_cnn[1]
    assert _max_diff(two, one) < 1e-5
    assert cost2.final_loss == pytest.approx(cost1.final_loss, abs=1e-5)
    # the loss per epoch (the report's training chart) is the global mean loss, whatever the number of processes
    assert [e["epoch"] for e in cost2.history] == [1, 2, 3]
    for a, b in zip(cost2.history, cost1.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    assert cost2.history[-1]["loss"] < cost2.history[0]["loss"]


def test_ddp_learns_and_reports_its_cost(ddp_cnn, data):
    model, cost = ddp_cnn[2]
    assert accuracy(model, data.x_eval, data.y_eval) > 0.8  # chance is 0.1
    extra = cost.extra
    assert (extra["processes"], extra["backend"], extra["launcher"]) == (2, "gloo", "torchrun")
    assert extra["steps"] == 3 * 22 and extra["global_batch"] == 64 and extra["sync_batchnorm"] is False
    assert 0 < extra["train_seconds"] < cost.seconds  # the wall time includes starting the processes
    assert cost.epochs == 3 and cost.samples_seen == 3 * len(data.x_train)
    assert cost.samples_per_s == pytest.approx(cost.samples_seen / cost.seconds)
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_ddp_syncbatchnorm_matches_one_process(ddp_resnet):
    (two, cost2), (one, cost1) = ddp_resnet[2], ddp_resnet[1]
    assert cost2.extra["sync_batchnorm"] is True and cost1.extra["sync_batchnorm"] is False
    assert isinstance(two.net.stem[1], torch.nn.BatchNorm2d)  # the trained state comes back into the original model
    assert _max_diff(two, one) < 1e-5  # running statistics included
    assert not torch.equal(two.net.stem[1].running_mean, torch.zeros(4))  # BN statistics were trained


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (249, 32, 2), (7, 5, 3), (5, 8, 1)])
def test_global_batches_ranks_together_see_the_single_process_batches(n, batch, world):
    single = GlobalBatches(n, batch, seed=3)
    ranks = [GlobalBatches(n, batch, seed=3, rank=r, world_size=world) for r in range(world)]
    for epoch in range(2):
        steps = list(zip(single.batches(epoch), *(r.batches(epoch) for r in ranks), strict=True))
        assert len(steps) == len(single) == -(-n // batch)
        for (whole, scale), *slices in steps:
            assert torch.equal(torch.cat([idx for idx, _ in slices]), whole)  # contiguous slices, in rank order
            assert scale == 1 / len(whole)  # a summed loss becomes the global mean...
            assert all(s == world / len(whole) for _, s in slices)  # ...after DDP averages the ranks' gradients
    first = next(single.batches(0))[0]
    assert torch.equal(first, next(single.batches(0))[0])  # an epoch's order depends on seed + epoch alone
    assert not torch.equal(first, next(single.batches(1))[0])  # reshuffled per epoch


def test_an_empty_slice_adds_nothing_to_the_loss(data):
    """A rank trains with `fit`, its global-batch plan and a summed loss: 7 samples in global batches of 5 on 3
    ranks leave rank 2 nothing of the last batch, which must add 0 to the loss, not NaN."""
    small = _subset(data, 7)
    model = _model(small)
    plan = GlobalBatches(7, 5, seed=0, rank=2, world_size=3)
    assert [len(idx) for idx, _ in plan.batches(0)] == [1, 0]
    cost = fit(model, small.x_train, small.y_train, OptimConfig(epochs=1, batch_size=5), seed=0,
               loss_fn=summed_cross_entropy, plan=plan)  # fmt: skip
    assert cost.final_loss == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "params,field",
    [
        ({"world_size": 0}, "world_size"),
        ({"world_size": 4, "batch_size": 2}, "batch_size"),
        ({"backend": "mpi"}, "backend"),
    ],
)
def test_ddp_bad_config_names_the_field(params, field):
    with pytest.raises(ConfigError) as info:
        parse_config(RECIPES.get("ddp").config_cls, params)
    assert info.value.field == field


def test_ddp_backend_resolution():
    assert resolve_backend("auto", "cpu", 2) == "gloo"
    assert resolve_backend("gloo", "cpu", 2) == "gloo"
    with pytest.raises(ConfigError) as info:
        resolve_backend("nccl", "cpu", 2)
    assert info.value.field == "backend"
    defaults = parse_config(RECIPES.get("ddp").config_cls, {})
    assert (defaults.world_size, defaults.backend, defaults.batch_size) == (2, "auto", 64)


# --- the launcher --------------------------------------------------------------------------------------------------


def _echo_worker(spec):
    """A worker named by import path in a spec: what a new distributed recipe would bring along."""
    Path(spec["out"]).write_text(json.dumps(spec["payload"]))


def test_launch_runs_the_worker_the_spec_names(tmp_path):
    spec = {"worker": f"{__name__}:_echo_worker", "out": str(tmp_path / "out.json"), "payload": [1, "a"]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert launch.main([str(tmp_path / "spec.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == [1, "a"]
    assert launch.main([]) == 2


def test_worker_env_reaches_user_modules_and_splits_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(userimport, "USER_ROOTS", [tmp_path])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = launch.worker_env(2)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.worker_env(2)["OMP_NUM_THREADS"] == "3"  # the caller's choice stands


RANK_FAILURE_LOG = """\
[rank1]: Traceback (most recent call last):
[rank1]:     raise ValueError("shapes (3, 4) and (5, 6)")
[rank1]: ValueError: shapes (3, 4) and (5, 6)
[rank0]: RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:51428.
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
"""


def _fake_launches(monkeypatch, outcomes):
    """Replace the torchrun process by `outcomes`, a list of (exit code, log text) taken one per launch."""
    calls = []

    def fake(cmd, workdir, log_path, nproc, timeout_s):
        code, text = outcomes[len(calls)]
        calls.append(code)
        log_path.write_text(text)
        return code

    monkeypatch.setattr(launch, "_launch", fake)
    return calls


def test_a_failed_launch_names_the_first_rank_error_in_its_first_line(tmp_path, monkeypatch):
    calls = _fake_launches(monkeypatch, [(1, RANK_FAILURE_LOG), (0, "")])
    with pytest.raises(RuntimeError) as err:
        launch.torchrun(2, {"worker": "x:y"}, tmp_path, what="ddp")
    first_line = str(err.value).splitlines()[0]
    expected = "ddp: torchrun (2 processes) exited with 1: ValueError: shapes (3, 4) and (5, 6); its output ends:"
    assert first_line == expected
    assert calls == [1]  # a rank's own error is not retried
    assert launch.first_rank_error("") == "no output"
    assert launch.first_rank_error("W1123 agent lost\n=====\n") == "W1123 agent lost"


def test_a_launch_that_lost_its_port_is_started_once_more(tmp_path, monkeypatch):
    taken = "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address."
    calls = _fake_launches(monkeypatch, [(1, taken), (0, "")])
    assert launch.torchrun(2, {"worker": "x:y"}, tmp_path, what="ddp") >= 0
    assert calls == [1, 0]
    calls = _fake_launches(monkeypatch, [(1, taken + " EADDRINUSE"), (1, taken)])
    with pytest.raises(RuntimeError, match=r"exited with 1: torch\.distributed\.DistNetworkError"):
        launch.torchrun(2, {"worker": "x:y"}, tmp_path, what="ddp")
    assert calls == [1, 1]  # once more, not forever


# --- fedavg --------------------------------------------------------------------------------------------------------

FED = {**ADAMW, "rounds": 5, "clients": 4}


@pytest.fixture(scope="module")
def fed_runs(data):
    """(model, cost, clean accuracy) of fedavg variants on the full train split, simulated."""
    variants = {
        "iid": {},
        "dirichlet": {"split": "dirichlet", "dirichlet_alpha": 0.1},
        "topk": {"update_compression": "topk", "topk_ratio": 0.1},
        "int8": {"update_compression": "int8"},
    }
    out = {}
    for name, params in variants.items():
        model, cost = _train("fedavg", {**FED, **params}, data)
        out[name] = (model, cost, accuracy(model, data.x_eval, data.y_eval))
    return out


@pytest.mark.parametrize(
    "params",
    [{"clients": 1}, {"clients": 3}, {"clients": 4, "split": "dirichlet", "dirichlet_alpha": 0.3}],
    ids=["1-client", "3-clients-iid", "4-clients-dirichlet"],
)
def test_fedsgd_is_full_batch_gradient_descent(data, params):
    """One local full-batch SGD step per round (momentum 0, constant lr) averaged by sample counts equals
    `standard` with one full-batch step per epoch: the weighted mean of the shards' mean gradients is the mean
    gradient of the whole split. Exact up to float summation order, for any number of clients and any split."""
    small = _subset(data, 256)
    sgd = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 5e-4, "schedule": "constant"}
    central, _ = _train("standard", {**sgd, "epochs": 4, "batch_size": 256}, small)
    fed, cost = _train("fedavg", {**sgd, "rounds": 4, "local_epochs": 1, "batch_size": 256, **params}, small)
    assert _max_diff(fed, central) < 1e-5
    assert sum(cost.extra["client_samples"]) == 256 and cost.samples_seen == 4 * 256


def _dominant_share(hist):
    return sum(max(h) / sum(h) for h in hist) / len(hist)


def test_dirichlet_split_skews_labels_and_iid_does_not(data):
    y = data.y_train
    iid = client_shards(y, 4, "iid", 0.5, 0, 10)
    skew = client_shards(y, 4, "dirichlet", 0.1, 0, 10)
    for shards in (iid, skew):  # a partition of the train split
        assert torch.equal(torch.cat(shards).sort().values, torch.arange(len(y)))
    assert max(len(s) for s in iid) - min(len(s) for s in iid) <= 1
    global_share = torch.bincount(y, minlength=10).double() / len(y)

    def total_variation(shards):
        return max(
            0.5 * (torch.bincount(y[s], minlength=10).double() / len(s) - global_share).abs().sum() for s in shards
        )

    hist = lambda shards: [torch.bincount(y[s], minlength=10).tolist() for s in shards]  # noqa: E731
    assert total_variation(iid) < 0.1 and total_variation(skew) > 0.4
    assert _dominant_share(hist(skew)) > 2 * _dominant_share(hist(iid))
    assert torch.equal(torch.cat(client_shards(y, 4, "dirichlet", 0.1, 0, 10)), torch.cat(skew))  # seeded
    assert not torch.equal(torch.cat(client_shards(y, 4, "dirichlet", 0.1, 1, 10)), torch.cat(skew))


def test_fedavg_learns_and_label_skew_costs_accuracy(fed_runs, data):
    _, iid_cost, iid_acc = fed_runs["iid"]
    _, skew_cost, skew_acc = fed_runs["dirichlet"]
    assert iid_acc > 0.6 and skew_acc > 0.3  # chance is 0.1
    assert iid_acc > skew_acc
    assert _dominant_share(skew_cost.extra["label_histogram"]) > 2 * _dominant_share(iid_cost.extra["label_histogram"])
    extra = iid_cost.extra
    assert (extra["rounds"], extra["clients"], extra["processes"], extra["mode"]) == (5, 4, 1, "simulate")
    assert [sum(h) for h in extra["label_histogram"]] == extra["client_samples"]
    assert sum(extra["client_samples"]) == len(data.x_train)
    assert iid_cost.epochs == 5 and iid_cost.samples_seen == 5 * len(data.x_train)
    assert len(extra["round_loss"]) == 5 and extra["round_loss"][-1] < extra["round_loss"][0]


def test_update_compression_cuts_the_uplink_and_still_trains(fed_runs):
    dense = fed_runs["iid"][1].extra
    assert dense["bytes_sent"] == [5 * dense["dense_update_bytes"]] * 4 and dense["compression_ratio"] == 1.0
    for name, lo, hi in [("topk", 0.19, 0.21), ("int8", 0.25, 0.26)]:
        _, cost, acc = fed_runs[name]
        extra = cost.extra
        ratio = extra["bytes_sent_total"] / dense["bytes_sent_total"]
        assert lo < ratio < hi, (name, ratio)  # top-k 10%: values + int32 indices; int8: a quarter + scales
        assert extra["compression_ratio"] == pytest.approx(ratio)
        assert extra["bytes_received"] == dense["bytes_received"]  # the downlink stays dense
        assert acc > 0.3, (name, acc)


def test_compress_update():
    torch.manual_seed(0)
    u = torch.randn(50, 4)
    top, nbytes = compress_update(u, "topk", 0.1)
    assert nbytes == 20 * 8 and int((top != 0).sum()) == 20
    assert top.abs().min() == 0 and top[top != 0].abs().min() >= u.abs().flatten().topk(20).values.min()
    q, nbytes = compress_update(u, "int8", 0.1)
    assert nbytes == 200 + 4 and (q - u).abs().max() <= u.abs().max() / 127 / 2 + 1e-6
    assert compress_update(u, "none", 0.1) == (u, 800)
    assert compress_update(torch.zeros(3), "int8", 0.1)[0].eq(0).all()


def test_fedavg_simulate_and_torchrun_agree(data):
    small = _subset(data, 300)
    params = {**ADAMW, "rounds": 2, "clients": 2, "split": "dirichlet", "update_compression": "topk"}
    sim, sim_cost = _train("fedavg", params, small)
    dist, dist_cost = _train("fedavg", {**params, "mode": "torchrun"}, small)
    assert _max_diff(sim, dist) < 1e-5
    for key in ("bytes_sent", "bytes_received", "label_histogram", "client_samples", "round_loss"):
        assert sim_cost.extra[key] == dist_cost.extra[key], key
    assert sim_cost.samples_seen == dist_cost.samples_seen
    extra = dist_cost.extra
    assert (extra["processes"], extra["launcher"], extra["backend"]) == (2, "torchrun", "gloo")
    assert 0 < extra["train_seconds"] < dist_cost.seconds


def test_fedavg_runs_any_recipe_as_the_local_step(data):
    small = _subset(data, 200)
    params = {**ADAMW, "rounds": 1, "clients": 2}
    plain, _ = _train("fedavg", params, small)
    alpha0, _ = _train("fedavg", {**params, "local_recipe": "fgsm_augment", "local_params": {"alpha": 0.0}}, small)
    assert _max_diff(plain, alpha0) == 0  # fgsm_augment with alpha 0 is `standard`
    adv, cost = _train("fedavg", {**params, "local_recipe": "pgd_at", "local_params": {"eps": 0.1, "steps": 2}}, small)
    assert _max_diff(plain, adv) > 0 and cost.extra["local_recipe"] == "pgd_at"


@pytest.mark.parametrize(
    "params,field",
    [
        ({"clients": 0}, "clients"),
        ({"rounds": 0}, "rounds"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"dirichlet_alpha": -1.0}, "dirichlet_alpha"),
        ({"local_recipe": "nope"}, "local_recipe"),
        ({"local_recipe": "fedavg"}, "local_recipe"),
        ({"local_recipe": "ddp"}, "local_recipe"),
        ({"local_recipe": "pgd_at", "local_params": {"eps": -1.0}}, "local_params.eps"),
        ({"local_params": {"eps": 0.1}}, "local_params.eps"),  # `standard` has no eps
        ({"local_params": {"lr": 0.1}}, "local_params"),
        ({"topk_ratio": 0.0}, "topk_ratio"),
        ({"clients": 2, "processes": 3}, "processes"),
        ({"update_compression": "fp16"}, "update_compression"),
        ({"mode": "mpi"}, "mode"),
        ({"lr": 0.0}, "lr"),
        ({"round_attack": {"eps": -0.1}}, "round_attack.eps"),
        ({"round_attack": {"epsilon": 0.1}}, "round_attack.epsilon"),
        ({"round_attack": 0.3}, "round_attack"),
        ({"keep": "first"}, "keep"),
    ],
)
def test_fedavg_bad_config_names_the_field(params, field):
    with pytest.raises(ConfigError) as info:
        parse_config(RECIPES.get("fedavg").config_cls, params)
    assert info.value.field == field


def test_fedavg_defaults():
    cfg = parse_config(RECIPES.get("fedavg").config_cls, {})
    assert (cfg.clients, cfg.rounds, cfg.local_epochs, cfg.split, cfg.dirichlet_alpha) == (4, 5, 1, "iid", 0.5)
    assert (cfg.local_recipe, cfg.update_compression, cfg.topk_ratio, cfg.mode) == ("standard", "none", 0.1, "simulate")
