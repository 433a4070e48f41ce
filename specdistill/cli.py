"""The ``specdistill`` command. Each subcommand's flags come from one dataclass,
so a default is written once (in the dataclass)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from specdistill.options import build, defaults, leaf_fields, read_config_file
from specdistill.training.config import TrainConfig
from specdistill.training.graceful_stop import TrainingStopped


def add_config_flags(parser: argparse.ArgumentParser, config_cls) -> None:
    """One ``--flag`` per field (nested configs flattened), typed and defaulted from
    the dataclass, with the field's help; plus ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="a JSON or YAML file of these settings; flags override it")
    values = defaults(config_cls)
    for path, field, kind in leaf_fields(config_cls):
        name = path[-1]
        flag = "--" + name.replace("_", "-")
        # argparse formats help with %: a literal percent sign must be doubled.
        help_text = f"{field.metadata.get('help', '')} (default: {values[name]!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=values[name], help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=values[name], help=help_text)


PRESETS = Path(__file__).parent / "presets"  # train --preset NAME reads presets/NAME.yaml


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS.glob("*.yaml"))


def parse_config(parser: argparse.ArgumentParser, config_cls, argv: list[str]):
    """The config from ``--preset NAME`` and ``--config FILE`` (if given, the file over the
    preset) overridden by the flags on the command line."""
    known, _ = parser.parse_known_args(argv)
    files = []
    if getattr(known, "preset", None):
        if known.preset not in preset_names():
            raise ValueError(f"unknown preset {known.preset!r}; choose one of {', '.join(preset_names())}")
        files.append(str(PRESETS / f"{known.preset}.yaml"))
    if known.config:
        files.append(known.config)
    for file in files:
        from_file = read_config_file(file)
        unknown = set(from_file) - set(defaults(config_cls))
        if unknown:
            raise ValueError(f"config file {file!r} sets unknown field(s): {', '.join(sorted(unknown))}")
        parser.set_defaults(**from_file)
    args = parser.parse_args(argv)
    return build(config_cls, {name: getattr(args, name) for name in defaults(config_cls)})


PRINTS_SUMMARY = ("train", "cache-teacher", "generate-data", "make-prompts")  # the others print their own


def _subcommands():
    # Imported lazily so `specdistill --help` stays fast.
    from specdistill.adapt import AdaptConfig
    from specdistill.adapt_loop import adapt_command
    from specdistill.bench import BenchConfig, run_bench
    from specdistill.demo import DemoConfig, run_demo
    from specdistill.serve.config import ServeConfig
    from specdistill.serve.server import run_serve
    from specdistill.teacher.generate import run_generate_data
    from specdistill.teacher.generate_config import GenerateConfig
    from specdistill.teacher.make_prompts import MakePromptsConfig, run_make_prompts
    from specdistill.training.teacher_cache import CacheConfig, run_cache_teacher

    def run_train(config: TrainConfig) -> dict:
        from specdistill.training.trainer import train

        result = train(config)
        result.pop("draft")
        return {k: v for k, v in result.items() if k != "history"} | {"last": result["history"][-1:]}

    return {
        "demo": (DemoConfig, run_demo, "prune a draft from the default target, distill it, measure before/after"),
        "train": (TrainConfig, run_train, "distill a draft for a target (resumes from output_dir)"),
        "cache-teacher": (CacheConfig, run_cache_teacher,
                          "run the target once over the data and keep its top-k log-probs (train --teacher-cache)"),
        "generate-data": (GenerateConfig, run_generate_data,
                          "collect (prompt, response) records from an OpenAI-compatible endpoint or a local teacher"),
        "make-prompts": (MakePromptsConfig, run_make_prompts,
                         "turn local text (.py, .md, .rst, .txt files) into instruction prompts"),
        "bench": (BenchConfig, run_bench, "measure a draft: acceptance and tokens/s vs the target alone "
                                          "(`bench workflow ...` and `bench recipes ...` run bench/ scripts)"),
        "serve": (ServeConfig, run_serve, "serve speculative decoding over an OpenAI-compatible HTTP API"),
        "adapt": (AdaptConfig, adapt_command, "fine-tune the serving head on captured traffic (serve --capture), "
                                              "check it on held-back requests and chat, swap it into the server"),
    }


BENCH_SCRIPTS = {"workflow": "workflow.py", "recipes": "draft_recipes.py"}  # `specdistill bench NAME ...`


def run_bench_script(name: str, argv: list[str]) -> int:
    """``specdistill bench workflow|recipes ...``: the benchmark scripts of a source checkout (bench/)."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "bench" / BENCH_SCRIPTS[name]
    if not script.exists():
        print(f"specdistill bench {name}: error: {script} is not here; it ships with the source checkout "
              "(git clone), not with an installed wheel", file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_SCRIPTS:
        return run_bench_script(argv[1], argv[2:])
    commands = _subcommands()
    parser = argparse.ArgumentParser(prog="specdistill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (config_cls, _, help_text) in commands.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_config_flags(parsers[name], config_cls)
    parsers["train"].add_argument("--preset", metavar="NAME", help=f"start from a named recipe: "
                                  f"{', '.join(preset_names())} (a --config file and flags override it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    config_cls, run, _ = commands[args.command]
    command_argv = argv[argv.index(args.command) + 1:]
    try:
        result = run(parse_config(parsers[args.command], config_cls, command_argv))
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"specdistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"specdistill {args.command}: {stopped}", file=sys.stderr)
        return 130  # as a shell reports a run stopped by Ctrl-C
    if args.command in PRINTS_SUMMARY and os.environ.get("RANK", "0") == "0":  # one line, from the main process
        print(json.dumps(result))
    return 0

if __name__ == "__main__":
    sys.exit(main())
