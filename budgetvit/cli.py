"""Command line: python -m budgetvit {train,eval,predict,export,info,speed,...}.

Any user error (bad config, path, argument, checkpoint) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from .config import (COMPILE_MODES, COMPILE_SCOPES, CheckpointError, ConfigError,
                     SameOnEveryRank)
from .presets import PRESETS

EXIT_USAGE = 2


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,128,224, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image sizes must be positive, got {text!r}")
    return sizes


RANK_0_GRACE_S = 30.0


def rank_0() -> bool:
    """Whether this process is torchrun's rank 0, or runs alone (read before torch is)."""
    return os.environ.get("RANK", "0") == "0" or int(os.environ.get("WORLD_SIZE", "1")) <= 1


def leave_it_to_rank_0() -> int:
    """Exit, silent, on a fault rank 0 finds too and says. Not at once: torchrun stops every
    process 0.1 s after one fails, and could stop rank 0 before it said it; rank 0's exit
    ends this wait."""
    time.sleep(RANK_0_GRACE_S)
    return EXIT_USAGE


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    _words: list[str] = []  # what this parser was given, for error()'s hint

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # one line, exit 2, like every other user error
        if not rank_0():  # (under torchrun every rank was given the same words)
            raise SystemExit(leave_it_to_rank_0())
        sys.stderr.write(f"error: {self.prog}: {message}{self._dash_hint(message)}\n")
        raise SystemExit(EXIT_USAGE)

    def _dash_hint(self, message: str) -> str:
        """argparse reads `--budget -5s` as two options and says only "expected one argument";
        the user meant a value, which the option's own check then judges."""
        missing = re.match(r"argument (\S+): expected one argument", message)
        names = missing[1].split("/") if missing else []
        words = self._words
        for i, word in enumerate(words[:-1]):
            value = words[i + 1]  # (not one of the options: a value forgotten)
            if word in names and value.startswith("-") and value not in self._option_string_actions:
                return f" ({value!r} reads as an option: write {word}={value})"
        return ""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="budgetvit", description="Train ViTs from scratch within a time budget.")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    t = sub.add_parser("train", help="train within a budget (no arguments: the fmnist default)")
    t.add_argument("--preset", default="fmnist",
                   help=f"recipe name: {', '.join(PRESETS)} (default: fmnist)")
    t.add_argument("--budget", help="training-time budget: 90s, 5m, 1h30m, 24h, 1d, or 500steps "
                   "(default: the preset's)")
    t.add_argument("--out", help="run directory (default runs/PRESET); rerun to resume")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set optim.lr=1e-3 data.path=/x")
    t.add_argument("--print-config", action="store_true", help="print the resolved config, exit")

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint at one or several sizes")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint file, run directory or exported .safetensors")
    e.add_argument("--img-size", type=_sizes, nargs="+", action="extend", metavar="S",
                   help="evaluation sizes (default: the run's final size)")
    e.add_argument("--data-path", help="dataset root, if not where the run found it (an "
                   "image tree needs val/ alone, unless the run held out data.holdout)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    pr = sub.add_parser("predict", help="top-5 classes of image files")
    pr.add_argument("--checkpoint", required=True,
                    help="checkpoint file, run directory or exported .safetensors")
    pr.add_argument("--img-size", type=positive_int, help="input size (default: final size)")
    pr.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    pr.add_argument("images", nargs="+", help="image files")

    x = sub.add_parser("export", help="export a checkpoint's weights as safetensors + JSON")
    x.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    x.add_argument("--out", required=True, help="output .safetensors path")
    x.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")

    i = sub.add_parser("info", help="parameters and forward GFLOPs of a model at several sizes")
    which = i.add_mutually_exclusive_group()
    which.add_argument("--model", default="vit_s16_local",
                       help="a model name (see Models; default: vit_s16_local)")
    which.add_argument("--preset", help="a preset's model, with its overrides")
    which.add_argument("--checkpoint", help="the model of a checkpoint file, run directory or "
                                            "exported .safetensors")
    i.add_argument("--sizes", type=_sizes,
                   help="image sizes (default: 32-224 px; a preset's or run's curriculum sizes)")
    i.add_argument("--num-classes", type=positive_int,
                   help="default 1000 (10 for the fmnist preset)")
    i.add_argument("--in-chans", type=positive_int, help="default 3 (1 for the fmnist preset)")

    s = sub.add_parser("speed", help="training-step throughput (images/s), optionally vs timm")
    s.add_argument("--model", default="vit_s16_local", help="default: vit_s16_local")
    s.add_argument("--img-size", "--sizes", dest="sizes", type=_sizes, default=[224],
                   help="one or several sizes, e.g. 64,128,224 (default: 224)")
    s.add_argument("--batch-size", type=positive_int, default=64, help="default: 64")
    s.add_argument("--steps", type=positive_int, default=10,
                   help="timed steps per repeat (default: 10)")
    s.add_argument("--repeats", type=positive_int, default=3,
                   help="timed blocks; the median is reported (default: 3)")
    s.add_argument("--compare-timm", action="store_true",
                   help="also time timm's same-shaped ViT in the same run")
    s.add_argument("--drop-path", type=float, default=0.0, metavar="RATE",
                   help="stochastic depth of the last block, in both models (imagenet presets: "
                   "0.1)")
    s.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    s.add_argument("--compile-scope", choices=COMPILE_SCOPES, default="blocks")
    s.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile mode; reduce-overhead replays CUDA graphs")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--trainer", action="store_true",
                   help="also time the full trainer step on the same model, batch and size")
    for module in command_modules():
        module.add_arguments(sub.add_parser(module.COMMAND, help=module.HELP))
    return p


# Subcommands that live in their own modules; each defines COMMAND, HELP, add_arguments(parser)
# and run(args) -> exit code.
EXTRA_COMMANDS = ["budgetvit.bench", "budgetvit.report", "budgetvit.data.prepare",
                  "budgetvit.data.bench_data"]


def command_modules():
    import importlib
    return [importlib.import_module(name) for name in EXTRA_COMMANDS]


def cmd_train(args) -> int:
    from .config import apply_overrides, check_one_budget, validate
    from .presets import get_preset
    try:
        cfg = get_preset(args.preset)
        check_one_budget(args.budget, args.set or [])
        if args.budget:
            cfg.train.budget = args.budget
        apply_overrides(cfg, args.set)
        if cfg.data.path:  # (as the run's config keeps it: eval, bench read it from elsewhere)
            cfg.data.path = os.path.abspath(os.path.expanduser(cfg.data.path))
        validate(cfg, paths=False)
    except ConfigError as e:
        raise SameOnEveryRank(str(e)) from None
    if args.print_config:
        import json
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    validate(cfg)  # (and now whether the data is there: a node's own)
    command = resume_command(sys.argv[1:])
    out = Path(args.out or f"runs/{cfg.preset}")
    created = [d for d in (out, *out.absolute().parents) if not d.exists()]  # deepest first
    from .train import TrainingStopped, train  # (after the checks: torch takes seconds)
    try:
        train(cfg, out, command)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BaseException:
        # A run refused before it wrote anything (a batch larger than the dataset, no GPU)
        # leaves no empty folders behind; rmdir stops at the first that is not empty.
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return 0


def _on_path(name: str, path: str) -> bool:
    """Whether PATH finds `path` as `name` (paths compared as given: a venv's python links to
    the system's, which lacks budgetvit)."""
    found = shutil.which(name)
    return found is not None and os.path.abspath(found) == os.path.abspath(path)


def _python() -> str:
    return "python" if _on_path("python", sys.executable) else shlex.quote(sys.executable)


def program() -> str:
    """budgetvit as this process was started, for the command it prints to resume: `budgetvit`
    only where PATH finds this one (README's `.venv/bin/budgetvit` in a shell without the venv
    activated: "command not found"), else the script's path or `python -m budgetvit`."""
    if os.path.basename(sys.argv[0]) == "__main__.py":  # python -m budgetvit
        return f"{_python()} -m budgetvit"
    return "budgetvit" if _on_path("budgetvit", sys.argv[0]) else shlex.quote(sys.argv[0])


def resume_command(args: list[str]) -> str:
    """The command that goes on with this run: under torchrun, torchrun with as many processes
    (the command alone would resume on one, another world size, with no exact continuation)."""
    text = " ".join(shlex.quote(a) for a in args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return f"{program()} {text}"
    if "LOCAL_WORLD_SIZE" not in os.environ:  # (not torchrun: its processes per node unknown)
        return f"the same launcher command ({program()} {text} in each of {world} processes)"
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    runner = os.path.join(os.path.dirname(sys.executable), "torchrun")  # (the venv's)
    launcher = ("torchrun" if _on_path("torchrun", runner) else
                shlex.quote(runner) if os.path.exists(runner) else
                f"{_python()} -m torch.distributed.run")
    script = ("-m budgetvit" if os.path.basename(sys.argv[0]) == "__main__.py" else
              shlex.quote(sys.argv[0]))  # (torchrun runs a script path, or -m a module)
    if world == per_node:
        return f"{launcher} --standalone --nproc_per_node={per_node} {script} {text}"
    return (f"on each of the {world // per_node} nodes, {launcher} --nnodes={world // per_node} "
            f"--nproc_per_node={per_node} (your rendezvous options) {script} {text}")


def handler(command: str):
    """The function that runs `command`, its module imported now: torch takes seconds to
    import, which --help, a usage error and `budgetvit report` need not wait for."""
    if command == "train":
        return cmd_train
    if command in ("eval", "predict", "export", "info", "speed"):
        from . import commands
        return getattr(commands, f"cmd_{command}")
    return next(m.run for m in command_modules() if m.COMMAND == command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not rank_0():  # (said once: every rank would say the same)
            return leave_it_to_rank_0()
        print(f"error: budgetvit {args.command} runs in one process: run it without "
              f"torchrun (train alone runs under torchrun)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args.command)(args)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError) as e:  # a path to fix
        if isinstance(e, SameOnEveryRank) and not rank_0():
            return leave_it_to_rank_0()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (for the exit flush)
        return 0
