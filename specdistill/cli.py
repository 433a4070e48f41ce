"""The ``specdistill`` command. Each subcommand's flags come from one dataclass,
so a default is written once (in the dataclass)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
import sys
import typing

from specdistill.train import TrainConfig


def field_comments(config_cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the dataclass source: its help text."""
    comments = {}
    for line in inspect.getsource(config_cls).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def add_dataclass_flags(parser: argparse.ArgumentParser, config_cls) -> None:
    """One ``--flag`` per field, typed and defaulted from the dataclass, with the
    field's trailing comment as help."""
    hints = typing.get_type_hints(config_cls)
    comments = field_comments(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{comments.get(field.name, '')} (default: {field.default!r})".strip()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)


def config_from_args(config_cls, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def _subcommands():
    # Imported lazily so `specdistill --help` stays fast.
    from specdistill.demo import BenchConfig, DemoConfig, run_bench, run_demo
    from specdistill.serve.config import ServeConfig, run_serve

    def run_train(config: TrainConfig) -> dict:
        from specdistill.train import train

        result = train(config)
        result.pop("draft")
        return {k: v for k, v in result.items() if k != "history"} | {"last": result["history"][-1:]}

    return {
        "demo": (DemoConfig, run_demo, "prune a draft from the default target, distill it, measure before/after"),
        "train": (TrainConfig, run_train, "distill a draft for a target (resumes from output_dir)"),
        "bench": (BenchConfig, run_bench, "measure a draft: acceptance and tokens/s vs the target alone"),
        "serve": (ServeConfig, run_serve, "serve speculative decoding over an OpenAI-compatible HTTP API"),
    }


def main(argv: list[str] | None = None) -> int:
    commands = _subcommands()
    parser = argparse.ArgumentParser(prog="specdistill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config_cls, _, help_text) in commands.items():
        add_dataclass_flags(sub.add_parser(name, help=help_text, description=help_text), config_cls)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    config_cls, run, _ = commands[args.command]
    try:
        result = run(config_from_args(config_cls, args))
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"specdistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.command == "train" and os.environ.get("RANK", "0") == "0":  # one line, from the main process
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
