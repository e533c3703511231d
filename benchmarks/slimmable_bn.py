"""Per-width BatchNorm statistics, measured both ways (docs/widths.md): switchable BN against post-hoc recalibration.

One slimmable training run (sandwich rule + feature distillation) of a small mtl-cnn on `scenes`: the two modes train
identically (a BatchNorm in train mode normalises with its batch's statistics, never the running ones), so the run
keeps switchable statistics and the same weights are then scored (a) with them and (b) after recalibrating each
configuration's statistics from K training batches. Held-out metrics per task at the widest and the narrowest
configuration; prints a table and writes benchmarks/results/slimmable_bn.json.

    .venv/bin/python benchmarks/slimmable_bn.py [--steps 300] [--batches 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import start_run, write_results

from edgemtl.data import data_spec, load_data
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.zoo import build_model, slimmable_spec, zoo_spec
from edgemtl.training import TrainConfig
from edgemtl.training.slimmable import SlimmableConfig, recalibrate_batchnorm, train_slimmable

RESULTS = Path(__file__).parent / "results" / "slimmable_bn.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-samples", type=int, default=1024)
    parser.add_argument("--val-samples", type=int, default=256)
    parser.add_argument("--batches", type=int, default=16, help="recalibration batches")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run = start_run()
    torch.set_num_threads(args.threads)   # on a shared machine, more threads than free cores is many times slower
    torch.manual_seed(0)
    input_spec, tasks = data_spec("scenes")
    spec = slimmable_spec(zoo_spec("mtl-cnn", input_spec, tasks, {"width": args.width, "head_width": args.width},
                                   data="scenes"))
    model = build_model(spec)
    train_set = load_data("scenes", "train", n=args.train_samples, seed=0)
    val_set = load_data("scenes", "val", n=args.val_samples)
    masks = WidthMasks(model, spec, bn="switchable")
    result, _ = train_slimmable(model, spec, train_set, TrainConfig(steps=args.steps, batch_size=args.batch_size),
                                SlimmableConfig(bn="switchable"), show_progress=False, masks=masks)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {}
    for label, widths in (("widest", spec.widths.widest()), ("narrowest", spec.widths.narrowest())):
        model.load_state_dict(trained)
        with masks.at(widths):
            switchable = evaluate(torch_predictor(model), spec.tasks, val_set)
        masks.bn = "recalibrate"
        recalibrate_batchnorm(model, train_set, batches=args.batches, batch_size=args.batch_size, masks=masks,
                              widths=widths)
        with masks.at(widths):
            recalibrated = evaluate(torch_predictor(model), spec.tasks, val_set)
        masks.bn = "switchable"
        rows[label] = {"switchable": switchable, "recalibrate": recalibrated}
    print(f"{'config':10} {'task':13} {'metric':10} {'switchable':>11} {'recalibrate':>12}")
    for label, modes in rows.items():
        for task, metrics in modes["switchable"].items():
            for metric, value in metrics.items():
                print(f"{label:10} {task:13} {metric:10} {value:11.4f} {modes['recalibrate'][task][metric]:12.4f}")
    write_results(RESULTS, {"args": vars(args), "train_seconds": round(result.seconds, 1),
                            "configuration_losses": result.configuration_losses, "metrics": rows}, run)
    print(f"trained {args.steps} steps in {result.seconds:.0f} s; {RESULTS}")


if __name__ == "__main__":
    main()
