import pytest

from specdistill.cli import main


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
    assert "is not a directory" in capsys.readouterr().err
