"""The `glmc` command line: `glmc data | presets | train | eval | bench | calibrate | compare | report | predict |
export | reproduce | tune`.

Every user error (`GlmcError`) is one line on stderr and exit code 2, never a traceback. Before anything else the
command imports the modules other installed packages declare in the `glmc.plugins` entry-point group, so the
datasets, encoders, methods and calibrations they register are known to every command. `glmc report` and `glmc
tune` import their modules when they run: they load matplotlib and Optuna, which no other command needs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from glmc import bench, calibration, compare, reproduce, status
from glmc.config import (COMPILE_MODES, build_config, config_from_dict, dump_config, flatten, load_config_file,
                         load_presets, method_preset, parse_override)
from glmc.data.datasets import DATASETS, DataConfig, create_dataset
from glmc.data.longtail import SPLITS
from glmc.data.validation import VALIDATIONS
from glmc.errors import GlmcError, RunInterrupted
from glmc.evaluation import evaluate_checkpoint
from glmc.export import export
from glmc.metrics import format_shots
from glmc.predict import Predictor, predict_files
from glmc.registry import unknown_name_message
from glmc.rundir import Resume, RunFolder
from glmc.trainer import train

DATA_ROOT_ENV = "GLMC_DATA_ROOT"
PLUGIN_GROUP = "glmc.plugins"  # [project.entry-points."glmc.plugins"] of a package that registers entries


def load_plugins() -> None:
    """Import every module of the `glmc.plugins` entry-point group: its decorators register its entries."""
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as error:  # a plugin's own bug: one line naming it, not a traceback from inside glmc
            first_line = (str(error).splitlines() or [""])[0]
            raise GlmcError(f"plugin {entry.name} ({entry.value}) failed to import: {type(error).__name__}: {first_line}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        load_plugins()
    except GlmcError as error:
        print(f"glmc: error: {error}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for the run's sessions.jsonl
    try:
        return args.run(args)
    except GlmcError as error:
        print(f"glmc: error: {error}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(f"glmc: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("glmc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `glmc data | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmc", description="GLMC for long-tailed image classification.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_command(commands)
    add_presets_command(commands)
    add_train_command(commands)
    add_status_command(commands)
    add_eval_command(commands)
    add_bench_command(commands)
    add_calibrate_command(commands)
    add_compare_command(commands)
    add_report_command(commands)
    add_predict_command(commands)
    add_export_command(commands)
    add_reproduce_command(commands)
    add_tune_command(commands)
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DataConfig()
    parser.add_argument("--dataset", default=defaults.dataset, help=f"one of: {', '.join(DATASETS.names())}")
    parser.add_argument(
        "--data-root",
        default=os.environ.get(DATA_ROOT_ENV, defaults.data_root),
        help=f"folder holding the dataset, e.g. cifar-10-batches-py/ (default: ${DATA_ROOT_ENV} or ./data)",
    )
    parser.add_argument("--imbalance-factor", type=float, default=defaults.imbalance_factor, help="n_max / n_min, >= 1")
    parser.add_argument("--split", default=defaults.split, help=f"split protocol: {', '.join(SPLITS.names())}")
    parser.add_argument("--download", action="store_true", help="fetch the official archive (MD5-checked) if missing")
    parser.add_argument("--train-list", default="", help="image-list datasets: the training list of `relative/path label` lines")
    parser.add_argument("--val-list", default="", help="image-list datasets: the validation list")
    parser.add_argument("--test-list", default="", help="image-list datasets: the test list")
    parser.add_argument("--long-tailed-subset", action="store_true",
                        help="image-file datasets: draw a long-tailed subset (--imbalance-factor, --split)")
    parser.add_argument("--validation", default=defaults.validation, choices=VALIDATIONS,
                        help="none, or held-out: a validation set out of the training images (docs/tuning.md)")
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class,
                        help="held-out, in-memory sets: validation images per class (default: the dataset's)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="held-out, image files without their own validation set: share of each class held out")


def data_config_from(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        imbalance_factor=args.imbalance_factor,
        split=args.split,
        download=args.download,
        train_list=args.train_list,
        val_list=args.val_list,
        test_list=args.test_list,
        long_tailed_subset=args.long_tailed_subset,
        validation=args.validation,
        val_per_class=args.val_per_class,
        val_fraction=args.val_fraction,
    )


def add_data_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="print the dataset card of a long-tailed dataset")
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the card as one JSON object")
    parser.set_defaults(run=run_data)


def run_data(args: argparse.Namespace) -> int:
    data = config_from_dict({"data": asdict(data_config_from(args))}).data  # validated as a run's would be
    card = create_dataset(data).card()
    print(json.dumps(card.to_json()) if args.json else card.render())
    return 0



def add_presets_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("presets", help="list the presets; show one's whole config, or what two differ in")
    parser.add_argument("names", nargs="*", metavar="PRESET",
                        help="one preset: its whole config as `glmc train --preset` uses it; two: the keys they differ in")
    parser.set_defaults(run=run_presets)


def run_presets(args: argparse.Namespace) -> int:
    presets = load_presets()
    if not args.names:
        width = max(map(len, presets))
        for name, preset in presets.items():
            print(f"{name:<{width}}  {preset.get('description', '')}")
        return 0
    if len(args.names) > 2:
        raise GlmcError(f"glmc presets shows one preset or compares two, got {len(args.names)}")
    configs = [build_config(name) for name in args.names]  # an unknown name is one line naming the close ones
    if len(configs) == 1:
        print(f"# {args.names[0]}: {presets[args.names[0]].get('description', '')}")
        print(dump_config(configs[0]), end="")
        return 0
    first, second = (flatten(config.to_dict()) for config in configs)
    differing = [key for key in dict.fromkeys([*first, *second]) if first.get(key, "-") != second.get(key, "-")]
    rows = [("", *args.names), *((key, *(str(values.get(key, "-")) for values in (first, second))) for key in differing)]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    if not differing:
        print("(the same config)")
    return 0


# flag -> config key; values are type-checked by the config, like --set ones
TRAIN_FLAGS = {
    "data_root": "data.data_root",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "device": "train.device",
    "max_steps": "train.max_steps",
}


def add_train_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a model and write a run folder")
    parser.add_argument("--preset", help="a preset from `glmc presets` (default: the built-in defaults)")
    parser.add_argument("--config", metavar="FILE", help="a config file: `preset` and `values` (glmc tune's best.yaml), "
                        "or a run's config.yaml")
    parser.add_argument("--output", help="run folder (default: runs/<preset>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="continue the run in --output if it holds this very run (same config), else start it: "
                             "what torchrun --max-restarts re-runs need")
    parser.add_argument("--data-root", help=f"dataset folder (default: ${DATA_ROOT_ENV} or ./data)")
    parser.add_argument("--download", action="store_true", help="fetch the dataset (MD5-checked) if missing")
    parser.add_argument("--epochs", help="total epochs")
    parser.add_argument("--batch-size", help="images per stream per step")
    parser.add_argument("--lr", help="peak learning rate")
    parser.add_argument("--seed", help="seed of initialisation, sampling and augmentation")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-steps", help="stop after this many steps (smoke runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value, e.g. method.beta=0.5")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument("--tensorboard", action="store_true", help="also log the metrics to RUN_DIR/tensorboard/ (needs tensorboard)")
    parser.set_defaults(run=run_train)


def train_overrides(args: argparse.Namespace) -> dict:
    overrides = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.data_root is None and DATA_ROOT_ENV in os.environ and not args.resume:
        overrides["data.data_root"] = os.environ[DATA_ROOT_ENV]
    if args.download:
        overrides["data.download"] = True
    overrides.update(parse_override(text) for text in args.set)
    return overrides


def run_train(args: argparse.Namespace) -> int:
    overrides = train_overrides(args)
    if args.resume:
        if args.preset or args.output or args.config:
            raise GlmcError("--resume continues a run folder with its own config; drop --preset/--config/--output")
        output = Path(args.resume)
        config = RunFolder(output).read_config(overrides)
    else:
        preset, values = args.preset, {}
        if args.config:
            if args.preset:
                raise GlmcError("give --preset or --config, not both (a config file names its preset)")
            preset, values = load_config_file(args.config)
        config = build_config(preset, {**values, **overrides})
        other = method_preset(preset, config.method.name) if preset and "method.name" in overrides else None
        if other and build_config(other, {**values, **overrides}) != config:  # a note only where the two differ
            print(f"glmc: note: {preset} with method.name={config.method.name} keeps {preset}'s options where "
                  f"{config.method.name} has them and its defaults elsewhere; --preset {other} is "
                  f"{config.method.name} as glmc's presets train it on this setting", file=sys.stderr)
        if args.resume_if_exists and not args.output:
            raise GlmcError("--resume-if-exists needs --output DIR: the folder to continue or start")
        output = Path(args.output or f"runs/{preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}")
    # --resume-if-exists: a restarted torchrun job continues its run (decided once the folder's lease is held)
    resume = Resume.ALWAYS if args.resume else Resume.IF_SAME_RUN if args.resume_if_exists else Resume.NEVER
    train(config, output, resume=resume, overwrite=args.overwrite, quiet=args.quiet, tensorboard=args.tensorboard,
          command=shlex.join(["glmc", *args.argv]))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"run folder: {output}")
    return 0


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="time a preset's training step and where its time goes")
    parser.add_argument("--preset", required=True, help="a preset from `glmc presets`")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the preset's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--data-root", help=f"dataset folder (default: ${DATA_ROOT_ENV} or ./data); random data if absent")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value")
    parser.add_argument("--input-only", action="store_true",
                        help="image-file presets: time only the workers' decoding and cropping (generated JPEGs if no data)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(run=run_bench)


def set_overrides(args: argparse.Namespace) -> dict:
    """The `--set KEY=VALUE` overrides, with `--data-root` (or $GLMC_DATA_ROOT) and `--device` on top: bench and tune."""
    overrides = dict(parse_override(text) for text in args.set)
    data_root = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if data_root:
        overrides["data.data_root"] = data_root
    if args.device:
        overrides["train.device"] = args.device
    return overrides


def run_bench(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.warmup < 0:
        raise GlmcError("--steps must be >= 1 and --warmup >= 0")
    overrides = set_overrides(args)
    measure = bench.run_input_bench if args.input_only else bench.run_bench
    result = measure(args.preset, build_config(args.preset, overrides), args.steps, args.warmup)
    print(json.dumps(result.to_json()) if args.json else result.render())
    return 0


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="re-evaluate a checkpoint on the test set")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--data-root", help="dataset folder (default: the one the run used)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--shot-bounds", choices=["standard", "authors"], help="many/medium/few bounds (default: the run's)")
    parser.add_argument("--on", choices=["test", "val", "train"], default="test",
                        help="test (default); val where the dataset has a validation list or folder; train: the "
                             "training images un-augmented, how well the model fits each class (a diagnostic, not a result)")
    parser.add_argument("--json", action="store_true", help="print the metrics object as JSON")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    metrics = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, device=args.device, shot_bounds=args.shot_bounds,
                                  part=args.on)
    if args.json:
        print(json.dumps(metrics.to_json()))
    else:
        print(f"top1 {metrics.top1:.2f}  top5 {metrics.top5:.2f}  {format_shots(metrics)}  ({metrics.num_samples} {args.on} images)")
    return 0


def add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "calibrate", help="post-hoc calibration of a checkpoint's classifier; writes a new checkpoint and its metrics")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--method", required=True,
                        help=f"the calibration and its parameters' defaults: {calibration.describe_calibrations()}")
    parser.add_argument("--output", help="new checkpoint (default: CKPT's name + -METHOD.pt); metrics go to the same name .json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the calibration, e.g. tau=0.5 or epochs=5 (defaults: under --method)")
    parser.add_argument("--data-root", help="dataset folder (default: the one the run used)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print the metrics record as JSON")
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    record = calibration.calibrate_checkpoint(args.checkpoint, args.method, args.set, output=args.output,
                                              data_root=args.data_root, device=args.device, overwrite=args.overwrite)
    print(json.dumps(record) if args.json else calibration.render(record))
    return 0


def add_status_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("status", help="where runs stand: finished, training, stopped or lost; how far; time left")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object per run, one per line")
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Each folder's status; one that holds no run is an error line, and the others are still shown."""
    refused = False
    for run_dir in args.runs:
        try:
            run = status.run_status(run_dir)
        except GlmcError as error:
            print(f"glmc: error: {error}", file=sys.stderr, flush=True)
            refused = True
            continue
        print(status.status_json(run) if args.json else "\n".join(status.status_lines(run)), flush=True)
    return 2 if refused else 0


def add_compare_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compare", help="one table of finished runs: method, split, backbone, top-1, many/medium/few")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="tabulate runs with different split fingerprints, test sets or shot bounds")
    parser.add_argument("--aggregate-seeds", action="store_true",
                        help="one row per setting: runs that differ only in seed (or machine, or how often they were "
                             "evaluated and saved), top-1 as mean ± std over them")
    parser.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    rows, notes = compare.compare_runs(args.runs, allow_mixed=args.allow_mixed, by_setting=args.aggregate_seeds)
    if args.markdown:
        try:
            Path(args.markdown).write_text(compare.render_markdown(rows, notes))
        except OSError as error:
            raise GlmcError(f"cannot write {args.markdown}: {error.strerror}") from None
    print(compare.render_text(rows, notes))
    return 0


def add_report_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="plots and a self-contained report.html of runs, finished or so far")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--output", help="report folder (default: RUN_DIR/report; several runs: reports/compare-<time>)")
    parser.add_argument("--data-root", help="dataset folder for the confusion matrix and, for a run not finished, its "
                                             "dataset card (default: the one the run used)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (for the confusion matrix)")
    parser.add_argument("--no-confusion", action="store_true", help="skip the confusion matrix (no test-set evaluation)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from glmc.report import make_report

    report = make_report(args.runs, output=args.output, data_root=args.data_root, device=args.device,
                         confusion=not args.no_confusion)
    print(f"report: {report}")
    return 0


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="class probabilities of image files (PNG/JPEG) or folders of them")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--topk", type=int, default=5, help="most probable classes per image (default: 5)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-root", help="dataset folder, only for checkpoints that predate stored preprocessing")
    parser.add_argument("--json", action="store_true", help="one JSON object per image (JSON Lines)")
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    predictor = Predictor(args.checkpoint, device=args.device, data_root=args.data_root)
    for prediction in predict_files(predictor, args.images, topk=args.topk, batch_size=args.batch_size):
        print(json.dumps(prediction.to_json()) if args.json else prediction.render(), flush=True)
    return 0


def add_export_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="a checkpoint as safetensors weights (config in the metadata) or ONNX")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--format", required=True, choices=["safetensors", "onnx"], help="safetensors: weights that glmc "
                        "eval/predict read; onnx: the prediction path (backbone + fc_cb), preprocessing in its metadata")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="weights' precision (default fp32; ONNX: fp32)")
    parser.add_argument("--output", required=True, metavar="FILE")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    print(f"exported: {export(args.checkpoint, args.format, args.output, args.dtype)}")
    return 0


def add_reproduce_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("reproduce", help="run a paper's table (resumable) and print it beside the published figures")
    parser.add_argument("table", nargs="?", metavar="TABLE", help="a table of tables.yaml (--list shows them)")
    parser.add_argument("--output", metavar="DIR", help="where the runs and table.md / table.json go")
    parser.add_argument("--list", action="store_true", help="list the tables and exit")
    parser.add_argument("--tables", metavar="FILE", help="a tables file of your own (default: the packaged tables.yaml)")
    parser.add_argument("--data-root", help=f"dataset folder (default: ${DATA_ROOT_ENV} or each preset's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seeds", type=int, help="seeds per row (default: the table's)")
    parser.add_argument("--only", action="append", default=[], metavar="ROW", help="only this row (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for every row (e.g. train.epochs=2 for a smoke run; kept apart in DIR)")
    parser.add_argument("--dry-run", action="store_true", help="list the rows, what is done and what remains, and stop")
    parser.add_argument("--bench", action="append", default=[], metavar="JSON",
                        help="glmc bench --json output to predict times from (also read: DIR/bench/*.json)")
    parser.add_argument("--export", action="store_true", help="write fp16 safetensors weights beside every finished run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, as separate processes (default 1; try more on a GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every run's step (train.compile: the same "
                        "loss; like --device, not part of the runs' identity)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, help="with --compile: torch.compile's mode (default: "
                        "default; reduce-overhead replays CUDA graphs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    tables = reproduce.load_tables(args.tables)
    if args.list:
        width = max(map(len, tables))
        for name, table in tables.items():
            print(f"{name:<{width}}  {len(table.rows)} rows  {table.description}")
        return 0
    if not args.table or not args.output:
        raise GlmcError("give a TABLE and --output DIR (glmc reproduce --list shows the tables)")
    if args.table not in tables:
        raise GlmcError(unknown_name_message("table", args.table, list(tables)))
    data_root = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if args.compile_mode and not args.compile:
        raise GlmcError("--compile-mode is the mode of --compile: give both")
    compile_mode = (args.compile_mode or "default") if args.compile else None
    plan = reproduce.make_plan(tables[args.table], args.output, args.seeds, args.only, args.set, data_root, args.device,
                               compile_mode)
    if args.dry_run:
        print(reproduce.dry_run(plan, args.bench))
        return 0
    table = reproduce.reproduce(plan, jobs=args.jobs, export=args.export, quiet=args.quiet,
                                log=(lambda message: None) if args.quiet else (lambda message: print(f"glmc: {message}", file=sys.stderr)))
    print(reproduce.render_markdown(table), end="")
    return 0


def add_tune_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("tune", help="choose a preset's hyper-parameters on a validation set (Optuna), never the test set")
    parser.add_argument("--preset", required=True, help="a preset from `glmc presets`")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should have (complete or pruned)")
    parser.add_argument("--output", required=True, metavar="DIR", help="study.db, trials/, best.yaml and report/ go here")
    parser.add_argument("--space", metavar="FILE", help="YAML changing the method's search space: KEY: {low, high[, log]}, "
                        "KEY: {choices: [...]} or KEY: null")
    parser.add_argument("--storage", metavar="URL", help="where the study lives (default DIR/study.db): an SQLAlchemy URL, "
                        "or journal:FILE for a file on a shared file system; several glmc tune commands may share it")
    parser.add_argument("--pruner", default="none", help="none (default) or median: stop a trial whose validation score at "
                        "an evaluation is below the median of earlier trials' at the same epoch")
    parser.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    parser.add_argument("--data-root", help=f"dataset folder (default: ${DATA_ROOT_ENV} or the preset's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config value for every trial")
    parser.set_defaults(run=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from glmc.tune import tune

    tune(args.preset, args.trials, args.output, space_file=args.space, storage=args.storage, overrides=set_overrides(args),
         pruner=args.pruner, sampler_seed=args.sampler_seed, log=lambda message: print(f"glmc: {message}", flush=True))
    print(f"best: {Path(args.output) / 'best.yaml'}  (glmc train --config {Path(args.output) / 'best.yaml'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
