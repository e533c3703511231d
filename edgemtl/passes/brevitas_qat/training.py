"""Calibration and quantization-aware training of a quantized task path (brevitas `calibration_mode`, AdamW)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import torch

from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError, first_line
from edgemtl.model.losses import supervised_loss
from edgemtl.model.spec import TaskSpec
from edgemtl.passes.brevitas_qat.config import QuantConfig
from edgemtl.passes.brevitas_qat.path import QuantTaskPath

with warnings.catch_warnings():  # brevitas warns about optional packages on import
    warnings.simplefilter("ignore")
    from brevitas.graph.calibrate import calibration_mode


def task_images(data: TaskData, count: int, seed: int) -> torch.Tensor:
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].numpy()
    return torch.from_numpy(data.normalise(data.images[index]))


def _batches_forever(data: TaskData, batch_size: int, seed: int) -> Iterator[tuple]:
    epoch = 0
    while True:
        yield from data.batches(batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def check_quantized_path_runs(qmodel: QuantTaskPath, images: torch.Tensor) -> None:
    """Calibration runs unquantized; an op brevitas cannot apply to quantized tensors surfaces here, as one line."""
    try:
        with torch.no_grad():
            qmodel.eval()(images)
    except Exception as exc:  # brevitas raises TypeError / RuntimeError from inside the traced graph
        call = next((line.strip() for line in str(exc).splitlines() if " = " in line), "")
        raise EdgemtlError(f"task {qmodel.task!r}: brevitas cannot run its quantized path ({first_line(exc)}"
                           f"{'; at ' + call if call else ''}): compile the other tasks with --tasks, "
                           "or this one for another target") from None
    finally:
        qmodel.train()


def calibrate(qmodel: QuantTaskPath, images: torch.Tensor, batch_size: int) -> None:
    """Activation ranges from real images with brevitas' `calibration_mode`.

    brevitas 0.13.4 records and restores each proxy's `observer_only` flags one proxy at a time; a
    tensor quantizer shared by two proxies (a concatenation's aligned inputs share one) is recorded a second
    time after the first proxy already switched it to observer-only, so it stays observer-only afterwards:
    it passes values through unrounded while still reporting its scale, and exported graphs (which do
    round) then disagree. Every quantizer was live before calibration, so switch them all back on."""
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for chunk in images.split(batch_size):
            qmodel(chunk)
    for module in qmodel.modules():
        if getattr(module, "observer_only", False):
            module.observer_only = False
    qmodel.eval()


def qat(qmodel: QuantTaskPath, task_spec: TaskSpec, data: TaskData, config: QuantConfig,
        stop: Callable[[int], bool] | None = None) -> int:
    """AdamW on weights (weight decay 1e-4) and on the learned log2 scales (no weight decay: decay would
    pull every scale towards 1); cosine-decayed learning rate. Every `config.check_every` steps `stop(step)` (in eval
    mode) may end it early; returns the steps run."""
    decay, no_decay = [], []
    for name, param in qmodel.named_parameters():
        (no_decay if "_quant" in name else decay).append(param)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, config.qat_steps)))))
    batches = _batches_forever(data, config.batch_size, config.seed)
    qmodel.train()
    for step in range(1, config.qat_steps + 1):
        images, targets = next(batches)
        loss = supervised_loss(task_spec, qmodel(images), targets[task_spec.name], task_spec.name in data.distilled)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(qmodel.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        if stop is not None and config.check_every and step % config.check_every == 0 and step < config.qat_steps:
            qmodel.eval()
            if stop(step):
                return step
            qmodel.train()
    qmodel.eval()
    return config.qat_steps


