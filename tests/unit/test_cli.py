import argparse
import dataclasses
import json

import pytest
from specdistill.serve.config import ServeConfig

from specdistill.bench import BenchConfig, MeasureConfig
from specdistill.cli import add_config_flags, main, parse_config
from specdistill.demo import DemoConfig
from specdistill.options import build, leaf_fields
from specdistill.training.config import TrainConfig


def test_flags_come_from_the_dataclass_with_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--keep-layers" in out and "--no-bf16" in out
    assert "target layers the pruned draft keeps" in out


def test_bad_config_fails_early_with_a_clear_message(capsys):
    assert main(["train", "--divergence", "kl"]) == 2
    assert "divergence must be one of fkl" in capsys.readouterr().err
    assert main(["bench", "--draft", "/no/such/draft"]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    for command in ("bench", "serve"):
        assert main([command, "--draft-tree", "5,3"]) == 2
        assert "DEPTH,TOP_K,NODES (e.g. 5,3,10), auto or none" in capsys.readouterr().err
    assert main(["serve", "--draft-tree-max-batch", "-1"]) == 2
    assert "draft_tree_max_batch must be >= 0 (0 = no cap)" in capsys.readouterr().err
    assert ServeConfig(draft_tree_max_batch=0).draft_tree_max_batch == 0  # the default: no fixed cap


def _parse(config_cls, argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, config_cls)
    return parse_config(parser, config_cls, argv)


def test_a_config_file_sets_fields_and_flags_override_it(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("steps: 7\nlr: 0.002\ndivergence: tvd\nbf16: false\n")
    config = _parse(TrainConfig, ["--config", str(path), "--lr", "0.01"])
    assert (config.steps, config.lr, config.divergence, config.bf16) == (7, 0.01, "tvd", False)
    (tmp_path / "train.json").write_text(json.dumps({"train": {"seq-len": 64}, "measure": {"num_prompts": 3}}))
    demo = _parse(DemoConfig, ["--config", str(tmp_path / "train.json")])
    assert (demo.train.seq_len, demo.measure.num_prompts) == (64, 3)


def test_a_config_file_with_an_unknown_or_bad_field_is_refused(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("stpes: 7\n")
    assert main(["train", "--config", str(tmp_path / "typo.yaml")]) == 2
    assert "unknown field(s): stpes" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert main(["train", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err


def test_demo_and_bench_configs_compose_the_train_and_measure_fields():
    demo = build(DemoConfig, {"steps": 5, "divergence": "jsd", "num_prompts": 2})
    assert isinstance(demo.train, TrainConfig) and isinstance(demo.measure, MeasureConfig)
    assert (demo.train.steps, demo.train.divergence, demo.measure.num_prompts) == (5, "jsd", 2)
    assert demo.train.output_dir == "runs/demo" and demo.train.data == "target"  # the demo's own defaults
    assert {path[-1] for path, _, _ in leaf_fields(DemoConfig)} >= {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ValueError, match="unknown DemoConfig field"):
        build(DemoConfig, {"no_such_field": 1})


def test_help_text_comes_from_field_metadata():
    for path, field, _ in leaf_fields(DemoConfig) + leaf_fields(ServeConfig) + leaf_fields(BenchConfig):
        assert field.metadata.get("help"), f"{path[-1]} has no help text"


def test_a_preset_is_a_named_config_file_that_flags_override(capsys):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    parser.add_argument("--preset")
    config = parse_config(parser, TrainConfig, ["--preset", "default-draft", "--steps", "3"])
    assert (config.draft_type, config.data, config.steps) == ("eagle3", "target", 3)
    assert "builtin:code" in config.answer_prompts
    assert main(["train", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'; choose one of default-draft" in capsys.readouterr().err


def test_bench_workflow_and_recipes_run_the_bench_scripts(capsys):
    for name, words in (("workflow", "which draft should I make"), ("recipes", "draft recipe study")):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", name, "--help"])
        assert exit_info.value.code == 0 and words in capsys.readouterr().out
