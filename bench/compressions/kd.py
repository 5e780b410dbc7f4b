"""`kd`: knowledge distillation into a smaller student (Hinton, Vinyals and Dean, "Distilling the Knowledge in a
Neural Network", 2015, arXiv:1503.02531).

The student, named in the suite, is trained from scratch on the train split with
    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)
(the T^2 keeps the soft-target gradients on the scale of the hard-label ones). The teacher is the trained model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed
from bench.config import check_range, parse_config
from bench.errors import ConfigError, UnknownNameError


@dataclasses.dataclass
class KDConfig:
    student: Any = "mlp"  # a model name or {name: ..., <model parameters>}
    temperature: float = 4.0
    alpha: float = 0.9
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, lo=0, lo_open=True)
        check_range("alpha", self.alpha, lo=0, hi=1)
        check_range("epochs", self.epochs, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("batch_size", self.batch_size, lo=1)
        self.student_name, self.student_config = _parse_student(self.student)


def _parse_student(spec: Any) -> tuple[str, Any]:
    from bench.models import MODELS

    params = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
    if params is None or not isinstance(params.get("name"), str):
        raise ConfigError("student", f"expected a model name or a mapping with 'name', got {spec!r}")
    name = params.pop("name")
    try:
        entry = MODELS.get(name)
    except UnknownNameError as exc:
        raise ConfigError("student", str(exc)) from exc
    except ConfigError as exc:  # a `package.module:function` that does not import
        raise ConfigError(f"student.{exc.field}", str(exc)) from exc
    try:
        return name, parse_config(entry.config_cls, params)
    except ConfigError as exc:
        raise ConfigError(f"student.{exc.field}", str(exc)) from exc


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float):
    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = nn.functional.log_softmax(teacher(x) / temperature, dim=1)
        logits = student(x)
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean", log_target=True
        )
        return alpha * temperature**2 * soft + (1 - alpha) * nn.functional.cross_entropy(logits, y)

    return loss


@COMPRESSIONS.register("kd", config=KDConfig, dtype="fp32")
def kd(model: nn.Module, cfg: KDConfig, ctx: CompressContext) -> Compressed:
    """Distil the trained model (teacher) into the student named in the suite."""
    from bench.models import build_model
    from bench.training import OptimConfig, fit

    data = ctx.data
    torch.manual_seed(ctx.seed)
    student = build_model(cfg.student_name, cfg.student_config, data.num_classes, data.in_shape, data.mean, data.std)
    teacher = model.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    optim = OptimConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    cost = fit(
        student,
        data.x_train,
        data.y_train,
        optim,
        seed=ctx.seed,
        device=ctx.device,
        loss_fn=distillation_loss(teacher, cfg.temperature, cfg.alpha),
    )
    meta = {
        "student": cfg.student_name,
        "teacher_params": sum(p.numel() for p in model.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "finetune_s": cost.seconds,
        "finetune_epochs": cost.epochs,
        "samples_seen": cost.samples_seen,
    }
    return Compressed(student.cpu().eval(), meta=meta)
