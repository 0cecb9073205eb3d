"""Compression you can trust (#18): recovery curves, calibration count, fine-tuning baselines.

    # 1. curve: k-means and mask x none / compensation / least squares, per ratio
    python bench/trust_bench.py curve --models mobilenetv2s resnet20 --ratios 0.25 0.5 0.625 0.75
    # 2. accuracy per calibration count (mask + least squares)
    python bench/trust_bench.py calibration --models resnet20 --ratios 0.5 --counts 16 64 256 1000
    # 2b. a MACs target shared out over the groups ("mask:2x") beside the same uniform ratio
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios 0.3
    #    ... and with every consumer refitted once more on the finished network
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios 0.3 --sweeps 1
    #    ... with channels chosen by the error left after the consumers' refit (the library's
    #    auto criterion with least squares; the bench's default stays `redundancy`, as in the
    #    rows before it)
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios --sweeps 1 \
        --count 1000 --criterion refit
    #    ... and with layers before a ReLU fitted to their clamped output
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios --sweeps 1 --relaxed
    # ... with the output-sensitivity plan; without residual targets (the method before them)
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios --sweeps 1 \
        --sensitivity
    python bench/trust_bench.py budget --models resnet20 --speedups 2 --ratios --sweeps 1 \
        --no-residual
    # 3. fine-tuning at equal budget: ours (mask or k-means + recovery + masked fine-tuning),
    #    Torch-Pruning's magnitude pruner at the same MACs (without and with the same
    #    fine-tuning), and the uncompressed model fine-tuned for the same extra epochs
    python bench/trust_bench.py finetune --models resnet20 --ratios 0.5 --epochs 1
    python bench/trust_bench.py report        # rewrite md + png from the json
    # 4. phone instructions of every point's architecture (bench/trust_phone.py)
    python bench/trust_phone.py

Every run appends / replaces its points in ``bench/results/compression-trust.json`` (a point
is keyed by part, model, method, ratio, calibration count and epochs) and rewrites
``compression-trust.md`` and ``.png``, so the parts can run separately and partial results
survive. Models: the shipped trained weights (`mdl_tvm.train.trained_model`). Data:
Fashion-MNIST from the package (`mdl_tvm.data`); calibration = the first N *training*
images, accuracy = top-1 on the test split (``--test-limit``, default all 10,000) run by the
compiled host library, MACs = ``compiled.stats.macs`` for every method, Torch-Pruning
included. Fine-tuning (``--recipe own``, the default): each model's own training recipe
(`mdl_tvm.train.RECIPES`) -- ResNet-20 and MobileNetV2-S: SGD Nesterov at a tenth of the
training peak (0.01, cosine to 0), weight decay 5e-4, augmentation; LeNet-5 and AlexNet-style:
Adam 1e-3, no augmentation -- batch 128, seed 0 (``--seed``), 1 thread, the same for every
arm. ``--recipe sgd`` fine-tunes every model with the SGD recipe (an Adam-trained net lost
accuracy under it: LeNet-5 at 50 % 0.8185 -> 0.7869, on weights trained before they shipped).
Torch-Pruning (``torch-pruning==1.6.1``, the ``bench`` extra; its dependency graph and L1
importance) keeps exactly the channel counts of ours per coupled group: same MACs, same
architecture (``--arms`` picks which of the three arms run). Run on a shared machine with
``TVM_NUM_THREADS=1 flock /tmp/mdl_heavy.lock ...``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/trust_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.trust_report import STEM, write  # noqa: E402

RECOVERIES = ("none", "compensation", "ls")
ARMS = ("uncompressed", "mask", "kmeans", "torch-pruning")
SHAPE = (1, 1, 28, 28)
FT = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "augment": True, "threads": 1}
RECIPES = ("own", "sgd")
# rows written before the recipe / criterion were recorded used FT / redundancy
DEFAULTS = {"recipe": "sgd", "criterion": "redundancy"}


def accuracy(compiled, images, labels) -> float:
    hits = sum(int(compiled.run(img[None])[0].argmax() == lab)
               for img, lab in zip(images, labels, strict=True))
    return hits / len(labels)


def compressor(method: str, recovery: str, ratio: float, calibration, masks=None,
               speedup: float | None = None, sweeps: int = 0, relaxed: bool = False,
               residual: bool = True, sensitivity: bool = False,
               criterion: str = "redundancy"):
    """The pass object for `method` (``kmeans`` / ``mask``) with `recovery` (`speedup`: a
    MACs target instead of one ratio; `sweeps`, `relaxed`, `residual`, `sensitivity`,
    `criterion`: `RecoveryConfig.refit_sweeps`, ``.relaxed_targets``, ``.residual_targets``,
    ``.output_sensitivity``, the mask's ``.criterion``)."""
    from relay_passes import CompressConfig, KMeansChannelClustering, MaskPruning, RecoveryConfig

    config = CompressConfig(speedup=speedup) if speedup else CompressConfig(ratio=ratio)
    if method == "kmeans":
        if recovery == "none":  # the data-free merge (Neuron Merging's scale)
            return KMeansChannelClustering(config)
        return KMeansChannelClustering(config, calibration=calibration,
                                       options=RecoveryConfig(recovery=recovery,
                                                              refit_sweeps=sweeps,
                                                              relaxed_targets=relaxed,
                                                              residual_targets=residual,
                                                              output_sensitivity=sensitivity))
    # mask: the same data-driven selection for every recovery
    options = RecoveryConfig(criterion=criterion, recovery=recovery, refit_sweeps=sweeps,
                             relaxed_targets=relaxed, residual_targets=residual,
                             output_sensitivity=sensitivity)
    return MaskPruning(config, options, calibration=calibration, masks=masks)


class Bench:
    """Loads data once; measures points and saves after each one."""

    def __init__(self, args):
        import torch

        from mdl_tvm.data import load_fashion_mnist

        torch.set_num_threads(1)
        self.args, self.start = args, time.perf_counter()
        self.x, self.y = load_fashion_mnist("test", limit=args.test_limit)
        self.train_x, _ = load_fashion_mnist("train", limit=max(1000, args.count,
                                                                 *args.counts))
        self.path = Path(args.out) / f"{STEM}.json"
        self.data = (json.loads(self.path.read_text()) if self.path.exists()
                     else {"meta": {}, "rows": []})
        self.base = {}

    def model(self, name):
        from mdl_tvm.train import trained_model

        return trained_model(name)

    def measure(self, compiled, **row) -> dict:
        t = time.perf_counter()
        row.update(accuracy=accuracy(compiled, self.x, self.y), macs=int(compiled.stats.macs),
                   weight_bytes=int(compiled.stats.weight_bytes),
                   latency_ms=compiled.benchmark(self.x[:1], repeat=50, warmup=5)["median_ms"],
                   test_images=len(self.y), eval_s=round(time.perf_counter() - t, 1))
        base = self.base.get(row["model"])  # the latency ratio is taken within one run
        row["base_latency_ms"] = base["latency_ms"] if base else row["latency_ms"]
        row["command"] = self.args.command  # the report lists every command behind its rows
        print(json.dumps(row), flush=True)
        self.save(row)
        return row

    def baseline(self, name, model):
        import mdl_tvm

        if name not in self.base:
            compiled = mdl_tvm.compile(model, "host", input_shapes=[SHAPE])
            self.base[name] = self.measure(compiled, part="base", model=name, method="none",
                                           recovery="none", ratio=0.0, calibration=0,
                                           epochs=0)
        return self.base[name]

    def save(self, row) -> None:
        key = ("part", "model", "method", "recovery", "ratio", "calibration", "epochs", "seed",
               "recipe", "speedup", "sweeps", "relaxed", "residual", "sensitivity", "criterion")
        rows = [r for r in self.data["rows"]  # absent: seed 0, the SGD recipe
                if any(r.get(k, DEFAULTS.get(k, 0)) != row.get(k, DEFAULTS.get(k, 0))
                       for k in key)]
        old = next((r for r in self.data["rows"] if r["part"] == "base" == row["part"]
                    and r["model"] == row["model"]), None)
        for r in rows if old else ():  # a new base: older rows keep the base they had
            if r["model"] == row["model"]:
                r.setdefault("base_latency_ms", old["latency_ms"])
        self.data["rows"] = rows + [row]
        self.data["meta"][self.args.part] = common.run_meta(self.args, self.start)
        write(self.data, self.args.out)

    def compressed(self, name, model, method, recovery, ratio, count, part, **extra):
        import mdl_tvm

        t = time.perf_counter()
        pruner = compressor(method, recovery, ratio, self.train_x[:count],
                            speedup=extra.get("speedup"), sweeps=extra.get("sweeps", 0),
                            relaxed=extra.get("relaxed", False),
                            residual=extra.get("residual", True),
                            sensitivity=extra.get("sensitivity", False),
                            criterion=extra.get("criterion", "redundancy"))
        compiled = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=pruner)
        seconds = round(time.perf_counter() - t, 1)
        if extra.get("speedup"):  # the planned share: report the channels removed in all
            groups = [r for r in pruner.reports if r.channels_after < r.channels_before]
            ratio = round(1 - sum(r.channels_after for r in groups)
                          / max(sum(r.channels_before for r in groups), 1), 4)
        held = getattr(pruner, "model_error", None)
        extra["channels"] = {r.name: [r.channels_before, r.channels_after]  # for the phone
                             for r in pruner.reports if r.channels_after < r.channels_before}
        row = self.measure(compiled, part=part, model=name, method=method, recovery=recovery,
                           ratio=ratio, calibration=count if method == "mask"
                           or recovery != "none" else 0, epochs=0, compress_s=seconds,
                           held_out=held, **extra)
        return row, pruner


def criterion_extra(args) -> dict:
    """A row's ``criterion`` key: only when it is not the bench's default (rows before
    it carry none)."""
    return {"criterion": args.criterion} if args.criterion != "redundancy" else {}


def run_curve(bench, args):
    for name in args.models:
        model = bench.model(name)
        bench.baseline(name, model)
        for ratio in args.ratios:
            for method in args.methods:
                for recovery in args.recoveries:
                    extra = criterion_extra(args) if method == "mask" else {}
                    bench.compressed(name, model, method, recovery, ratio, args.count, "curve",
                                     **extra)


def run_budget(bench, args):
    """A MACs target planned per group (`relay_passes.macs_budget`), mask + least squares,
    beside the uniform `--ratios` of the curve part (same calibration)."""
    for name in args.models:
        model = bench.model(name)
        bench.baseline(name, model)
        for sweeps in args.sweeps:
            extra = {"sweeps": sweeps} if sweeps else {}
            if args.relaxed:
                extra["relaxed"] = True
            extra["residual"] = not args.no_residual  # rows before: absent (False)
            if args.sensitivity:
                extra["sensitivity"] = True
            extra.update(criterion_extra(args))
            for speedup in args.speedups:
                bench.compressed(name, model, "mask", "ls", 0.0, args.count, "budget",
                                 speedup=speedup, **extra)
            for ratio in args.ratios:
                bench.compressed(name, model, "mask", "ls", ratio, args.count, "budget",
                                 **extra)


def run_calibration(bench, args):
    for name in args.models:
        model = bench.model(name)
        bench.baseline(name, model)
        for ratio in args.ratios:
            for count in args.counts:
                bench.compressed(name, model, "mask", "ls", ratio, count, "calibration",
                                 **criterion_extra(args))


def recipe_name(model: str, recipe: str = "own") -> str:
    """``"sgd"`` or ``"adam"``: the optimiser `model` is fine-tuned with under `recipe`."""
    from mdl_tvm.train import RECIPES as TRAINED
    from mdl_tvm.train import TrainConfig

    if recipe == "sgd":
        return "sgd"
    return TRAINED.get(model, TrainConfig()).optimizer


def finetune_config(epochs: float, seed: int = 0, optimizer: str = "sgd"):
    """Fine-tuning settings: the SGD recipe `FT`, or Adam 1e-3 without augmentation."""
    from mdl_tvm.compiler.finetune import FinetuneConfig

    kind = FT if optimizer == "sgd" else {"optimizer": "adam", "lr": 1e-3, "threads": 1}
    return FinetuneConfig(epochs=epochs, update_masks=False, seed=seed, **kind)


def run_finetune(bench, args):
    """Ours (mask, and k-means: masked fine-tuning from the merged network, each cluster's
    representative kept) vs Torch-Pruning vs uncompressed, all with ``args.epochs`` of
    fine-tuning."""
    if "kmeans" in args.arms and args.recovery == "none":
        raise ValueError("the kmeans arm fine-tunes from the merge fitted on calibration "
                         "data: --recovery compensation or ls, or --arms without kmeans")
    import mdl_tvm
    from mdl_tvm.compiler.finetune import masked_finetune, train_loop
    from relay_passes import MaskPruning, RecoveryConfig

    quiet = (lambda s: None) if not args.verbose else print
    for name in args.models:
        optimizer = recipe_name(name, args.recipe)
        config = finetune_config(args.epochs, args.seed, optimizer)
        seeded = {"seed": args.seed} if args.seed else {}
        seeded["recipe"] = optimizer
        model = bench.model(name)
        bench.baseline(name, model)
        if "uncompressed" in args.arms:
            tuned = train_loop(copy.deepcopy(model), config, quiet)
            bench.measure(mdl_tvm.compile(tuned, "host", input_shapes=[SHAPE]), part="finetune",
                          model=name, method="uncompressed+ft", recovery="none", ratio=0.0,
                          calibration=0, epochs=args.epochs, **seeded)
        for ratio in args.ratios:
            for method in [m for m in ("mask", "kmeans") if m in args.arms]:
                _, pruner = bench.compressed(name, model, method, args.recovery, ratio,
                                             args.count, "finetune")
                tuned, masks = masked_finetune(copy.deepcopy(model), config, quiet,
                                               masks=pruner.masks, consume=pruner.consume)
                commit = MaskPruning(options=RecoveryConfig(recovery="none"), masks=masks)
                bench.measure(mdl_tvm.compile(tuned, "host", input_shapes=[SHAPE],
                                              compress=commit),
                              part="finetune", model=name, method=f"{method}+ft",
                              recovery=args.recovery, ratio=ratio, calibration=args.count,
                              epochs=args.epochs, **seeded)
            if "torch-pruning" in args.arms:
                pruned = torch_pruning_at(model, ratio)
                bench.measure(mdl_tvm.compile(pruned, "host", input_shapes=[SHAPE]),
                              part="finetune", model=name, method="torch-pruning",
                              recovery="none", ratio=ratio, calibration=0, epochs=0)
                train_loop(pruned, config, quiet)
                bench.measure(mdl_tvm.compile(pruned, "host", input_shapes=[SHAPE]),
                              part="finetune", model=name, method="torch-pruning+ft",
                              recovery="none", ratio=ratio, calibration=0, epochs=args.epochs,
                              **seeded)


def torch_pruning_at(model, ratio: float):
    """A copy of `model` pruned by Torch-Pruning's magnitude (L1) importance with exactly the
    channel counts MobileDL's ``mask:<ratio>`` keeps: ``round(C * (1 - ratio))`` per coupled
    group (Torch-Pruning's dependency graph finds the same groups), so both arms have the same
    architecture and MACs and differ only in which channels go and how they are recovered."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    example = torch.zeros(SHAPE)
    classifier = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]
    graph = tp.DependencyGraph().build_dependency(pruned, example)
    importance = tp.importance.MagnitudeImportance(p=1)
    for group in list(graph.get_all_groups(ignored_layers=[classifier], root_module_types=[
            torch.nn.Conv2d, torch.nn.Linear])):
        channels = len(group[0].idxs)
        drop = torch.argsort(importance(group))[:channels - round(channels * (1 - ratio))]
        graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler,
                                idxs=drop.tolist()).prune()
    return pruned


# -- report ----------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = common.parser(__doc__, "python bench/trust_bench.py")
    parser.add_argument("part", choices=("curve", "budget", "calibration", "finetune",
                                         "report"))
    parser.add_argument("--models", nargs="+", default=["mobilenetv2s"])
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.25, 0.5, 0.625, 0.75],
                        help="none: only the baselines (finetune: the uncompressed arm)")
    parser.add_argument("--methods", nargs="+", default=["kmeans", "mask"],
                        choices=("kmeans", "mask"))
    parser.add_argument("--recoveries", nargs="+", default=list(RECOVERIES),
                        choices=RECOVERIES)
    parser.add_argument("--recovery", default="ls", choices=RECOVERIES,
                        help="recovery before fine-tuning")
    parser.add_argument("--count", type=int, default=256, help="calibration images")
    parser.add_argument("--speedups", nargs="+", type=float, default=[2.0],
                        help="budget part: MACs reduction targets")
    parser.add_argument("--sweeps", nargs="+", type=int, default=[0],
                        help="budget part: refit sweeps after the walk (RecoveryConfig."
                        "refit_sweeps), one set of points per value")
    parser.add_argument("--relaxed", action="store_true",
                        help="budget part: fit layers before a ReLU / ReLU6 to the clamped "
                        "output (RecoveryConfig.relaxed_targets)")
    parser.add_argument("--no-residual", action="store_true",
                        help="budget part: without residual targets "
                        "(RecoveryConfig.residual_targets=False)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="budget part: plan the MACs budget on output-sensitivity scaled "
                        "curves (RecoveryConfig.output_sensitivity)")
    parser.add_argument("--criterion", default="redundancy", choices=("redundancy", "refit"),
                        help="curve, budget and calibration parts: the mask criterion "
                        "(RecoveryConfig.criterion)")
    parser.add_argument("--counts", nargs="+", type=int, default=[16, 64, 256, 1000])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--recipe", default="own", choices=RECIPES,
                        help="finetune: each model's own training recipe, or SGD for all")
    parser.add_argument("--seed", type=int, default=0,
                        help="finetune: seed of the fine-tuning (batches, augmentation)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="finetune: which arms run (ours is `mask`)")
    parser.add_argument("--no-uncompressed", dest="arms", action="store_const",
                        const=["mask", "torch-pruning"], help="finetune: same as --arms mask "
                        "torch-pruning")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = common.parse_args(parser, argv)
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    if args.part == "report":
        path = Path(args.out) / f"{STEM}.json"
        write(json.loads(path.read_text()), args.out)
        return 0
    bench = Bench(args)
    parts = {"curve": run_curve, "budget": run_budget, "calibration": run_calibration,
             "finetune": run_finetune}
    parts[args.part](bench, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
