"""Command configs as dataclasses: help text and resume rules on each field, configs
composed of other configs, config files, and the check that a resumed run trains
what it started with.

A field is declared once, with ``option(default, "help")``; the CLI turns every
field into a ``--flag`` and a config file may set any of them. A field whose
default is itself a config (``nested(TrainConfig, output_dir=...)``) contributes
its fields as flags of their own, so ``DemoConfig`` takes every training flag
without repeating one.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import yaml


def option(default, help: str, *, resumable: bool = False):
    """A config field with its help text. ``resumable``: changing it when a run
    resumes is fine (how long, how often to save); otherwise a resumed run refuses
    a changed value, since it would no longer train what it started with."""
    return dataclasses.field(default=default, metadata={"help": help, "resumable": resumable})


def nested(config_cls, **defaults):
    """A field holding a whole sub-config, with some of its defaults changed."""
    return dataclasses.field(default_factory=lambda: config_cls(**defaults), metadata={"nested": config_cls})


def leaf_fields(config_cls) -> list[tuple[tuple[str, ...], dataclasses.Field, type]]:
    """(path, field, type) of every plain field, nested configs flattened; the flag
    names must be unique across the whole tree."""
    hints = typing.get_type_hints(config_cls)
    leaves = []
    for field in dataclasses.fields(config_cls):
        if "nested" in field.metadata:
            leaves += [((field.name, *path), f, t) for path, f, t in leaf_fields(field.metadata["nested"])]
        else:
            leaves.append(((field.name,), field, hints[field.name]))
    names = [path[-1] for path, _, _ in leaves]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise TypeError(f"{config_cls.__name__}: field names {clash} appear twice in its nested configs")
    return leaves


def defaults(config_cls) -> dict[str, typing.Any]:
    """Flat name -> default value, nested defaults included."""
    instance = config_cls()
    return {path[-1]: _get(instance, path) for path, _, _ in leaf_fields(config_cls)}


def build(config_cls, values: dict[str, typing.Any]):
    """The config from flat name -> value (missing names keep their defaults)."""
    unknown = set(values) - {path[-1] for path, _, _ in leaf_fields(config_cls)}
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s): {', '.join(sorted(unknown))}")
    merged = defaults(config_cls) | values
    return _build(config_cls, merged)


def _build(config_cls, flat: dict):
    kwargs = {}
    for field in dataclasses.fields(config_cls):
        sub = field.metadata.get("nested")
        kwargs[field.name] = _build(sub, flat) if sub else flat[field.name]
    return config_cls(**kwargs)


def _get(instance, path: tuple[str, ...]):
    for name in path:
        instance = getattr(instance, name)
    return instance


def flatten(values: dict) -> dict:
    """Config-file contents as flat field names: nested sections are merged in and
    dashes read as underscores, so a file may use flag spellings."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value)
        else:
            flat[key.replace("-", "_")] = value
    return flat


def read_config_file(path: str) -> dict:
    """A JSON or YAML file of field values (flat, or in sections named like the nested configs)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    text = file.read_text()
    try:
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path!r} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: "
                         f"{err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of field names to values")
    return flatten(values)


def changed_fields(saved: dict, current) -> list[str]:
    """Fields (not marked resumable) whose value in ``current`` differs from the
    ``saved`` (``asdict``) one, each as 'name: old -> new'."""
    changes = []
    for path, field, _ in leaf_fields(type(current)):
        old, new = _lookup(saved, path, field.default), _get(current, path)
        if not field.metadata.get("resumable") and old != new:
            changes.append(f"{path[-1]}: {old!r} -> {new!r}")
    return changes


def _lookup(values: dict, path: tuple[str, ...], missing):
    """``values[path[0]][path[1]]...``, or ``missing`` (a field added since the run started)."""
    for name in path:
        if not isinstance(values, dict) or name not in values:
            return missing
        values = values[name]
    return values
