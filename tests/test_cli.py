"""The training command line and its config: flags, TOML files, validation, and one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env
from pnn_mpi.commands import cli
from pnn_mpi.commands.cli import main
from pnn_mpi.common.errors import UserError
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.options import parse_train_args, train_parser

ALL_FLAGS = (
    "--hidden --activation --output --init --bias-init --batch-size --lr --momentum --lr-decay --epochs "
    "--sync --seed --dtype --data-dir --dataset --train-size --test-size --out --config --eval-every --shuffle"
).split()


@pytest.fixture
def fake_training(monkeypatch):
    """Replace run_training by a stub recording the config, so no MPI or data is ever touched."""
    calls: list[TrainConfig] = []
    monkeypatch.setattr("pnn_mpi.commands.run.run_training", calls.append)
    return calls


def write_toml(tmp_path, text: str, name: str = "run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_equal_train_config():
    """No flags gives exactly the TrainConfig defaults."""
    assert parse_train_args([]) == TrainConfig()


def test_flags_parse_into_config():
    """Each flag lands in its TrainConfig field with the right type."""
    cfg = parse_train_args(
        "--hidden 128 64 --activation tanh --output sigmoid-mse --init xavier-uniform --bias-init -0.5 "
        "--batch-size 1 --lr 0.1 --momentum 0 --lr-decay 0.9 --epochs 3 --sync steps:10 --seed 7 --dtype float64 "
        "--dataset mnist --data-dir /tmp/d --train-size 600 --test-size 100 --out /tmp/o --eval-every 0 --no-shuffle".split()
    )
    assert cfg == TrainConfig(
        hidden=(128, 64),
        activation="tanh",
        output="sigmoid-mse",
        init="xavier-uniform",
        bias_init=-0.5,
        batch_size=1,
        lr=0.1,
        momentum=0.0,
        lr_decay=0.9,
        epochs=3,
        sync="steps:10",
        seed=7,
        dtype="float64",
        dataset="mnist",
        data_dir="/tmp/d",
        train_size=600,
        test_size=100,
        out="/tmp/o",
        eval_every=0,
        shuffle=False,
    )
    assert cfg.hidden == (128, 64) and isinstance(cfg.hidden, tuple)
    assert cfg.schedule.kind == "steps" and cfg.schedule.every == 10


def test_hidden_without_value_is_linear_model():
    """--hidden with no widths means no hidden layer."""
    assert parse_train_args(["--hidden"]).hidden == ()
    assert parse_train_args(["--hidden", "--lr", "0.2"]) == TrainConfig(hidden=(), lr=0.2)


def test_batch_size_full_and_shuffle_flags():
    """--batch-size full selects full batch; --shuffle/--no-shuffle toggle shuffling; the last flag wins."""
    cfg = parse_train_args(["--batch-size", "full"])
    assert cfg.batch_size == "full" and cfg.full_batch
    assert not parse_train_args(["--batch-size", "8"]).full_batch
    assert parse_train_args(["--no-shuffle"]).shuffle is False
    assert parse_train_args(["--no-shuffle", "--shuffle"]).shuffle is True
    assert parse_train_args(["--epochs", "2", "--epochs", "9"]).epochs == 9


def test_toml_config_sets_values(tmp_path):
    """A TOML file sets any option by its flag name (dashes or underscores), lists and booleans included."""
    path = write_toml(
        tmp_path,
        'hidden = [64, 32]\nlr = 0.1\nsync = "epoch"\nbatch-size = "full"\nlr_decay = 0.5\n'
        "shuffle = false\nbias_init = -0.25\nseed = 0\ntrain-size = 1000\nepochs = 2\n",
    )
    cfg = parse_train_args(["--config", str(path)])
    assert cfg == TrainConfig(
        hidden=(64, 32), lr=0.1, sync="epoch", batch_size="full", lr_decay=0.5, shuffle=False, bias_init=-0.25, seed=0, train_size=1000, epochs=2
    )


def test_toml_empty_hidden_and_true_shuffle(tmp_path):
    """hidden = [] is a linear model and shuffle = true keeps shuffling on."""
    path = write_toml(tmp_path, "hidden = []\nshuffle = true\n")
    cfg = parse_train_args(["--config", str(path)])
    assert cfg.hidden == () and cfg.shuffle is True


def test_command_line_after_config_wins(tmp_path):
    """Flags given after --config override the file; values the flags leave alone come from the file."""
    path = write_toml(tmp_path, 'hidden = [64, 32]\nlr = 0.1\nsync = "epoch"\nshuffle = false\n')
    cfg = parse_train_args(["--config", str(path), "--lr", "0.3", "--hidden", "16", "--shuffle"])
    assert (cfg.lr, cfg.hidden, cfg.sync, cfg.shuffle) == (0.3, (16,), "epoch", True)


@pytest.mark.parametrize(
    "text",
    [
        "lr = \n",  # malformed
        "hidden = [1, 2\n",  # malformed
        "learning_rate = 0.1\n",  # unknown key
        "config = 'other.toml'\n",  # not a setting
        "lr = [0.1, 0.2]\n",  # list for a scalar
        "[lr]\nvalue = 0.1\n",  # table value
        "sync = { kind = 'end' }\n",  # inline table
        "shuffle = 'yes'\n",  # a boolean option given a string
    ],
)
def test_toml_errors_name_the_file(tmp_path, text):
    """Every unusable TOML file is a UserError whose message names the file."""
    path = write_toml(tmp_path, text, name="bad-config.toml")
    with pytest.raises(UserError) as info:
        parse_train_args(["--config", str(path)])
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"lr = 0.1\n# caf\xe9 (Latin-1, not UTF-8)\n", b"PK\x03\x04\x14\x00\x00\x00\x00\x00\xff\xfe\x00binary"],
    ids=["latin-1", "binary"],
)
def test_non_utf8_config_is_user_error(tmp_path, data, capsys, fake_training):
    """A config file that is not UTF-8 (a Latin-1 file, or a model.npz passed by mistake) is a
    UserError naming the file, reported by main() in one line with status 2, not a traceback."""
    path = tmp_path / "not-utf8.toml"
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        parse_train_args(["--config", str(path)])
    assert str(path) in str(info.value)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pnn_mpi: error: ") and err.count("\n") == 1


def test_missing_config_file_names_the_file(tmp_path):
    """A --config file that does not exist is a UserError naming it."""
    path = tmp_path / "absent.toml"
    with pytest.raises(UserError) as info:
        parse_train_args(["--config", str(path)])
    assert str(path) in str(info.value)


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-2"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "fast"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--lr-decay", "0"], "--lr-decay"),
    (["--lr-decay", "1.5"], "--lr-decay"),
    (["--activation", "swish"], "--activation"),
    (["--output", "hinge"], "--output"),
    (["--init", "zeros"], "--init"),
    (["--dtype", "float16"], "--dtype"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--sync", "bogus"], "--sync"),
    (["--sync", "steps:0"], "--sync"),
    (["--hidden", "0"], "--hidden"),
    (["--hidden", "64", "-1"], "--hidden"),
    (["--train-size", "-5"], "--train-size"),
    (["--test-size", "0"], "--test-size"),
    (["--seed", "-1"], "--seed"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--epochs"], "--epochs"),
]


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_value_is_user_error(argv, flag):
    """Each bad value is a UserError (not SystemExit, not another exception) naming the flag."""
    with pytest.raises(UserError) as info:
        parse_train_args(argv)
    assert flag in str(info.value)


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_main_reports_bad_flag_in_one_line(argv, flag, capsys, fake_training):
    """main() returns 2 and prints exactly one line, 'pnn_mpi: error: ...', on stderr and nothing on stdout."""
    assert main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pnn_mpi: error: ") and err.endswith("\n")
    assert err.count("\n") == 1
    assert fake_training == []


def test_main_reports_bad_config_in_one_line(tmp_path, capsys, fake_training):
    """A broken --config file through main(): status 2, one stderr line naming the file."""
    path = write_toml(tmp_path, "lr = = 3\n")
    assert main(["--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("pnn_mpi: error: ") and str(path) in err


def test_main_with_good_flags_trains_with_parsed_config(fake_training, capsys):
    """main() with valid flags (explicit 'train' command or none) hands the parsed config to training, returns 0."""
    assert main(["--epochs", "2", "--hidden", "32"]) == 0
    assert main(["train", "--sync", "grad"]) == 0
    assert fake_training == [TrainConfig(epochs=2, hidden=(32,)), TrainConfig(sync="grad")]
    assert capsys.readouterr().err == ""


def test_help_mentions_every_flag_and_command(capsys, monkeypatch, fake_training):
    """--help exits with status 0 and documents every flag and the other commands."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    missing = [flag for flag in ALL_FLAGS if flag not in out]
    assert missing == []
    assert "--no-shuffle" in out
    for command in ("download", "evaluate", "predict", "bench"):
        assert command in out
    assert fake_training == []


@pytest.mark.parametrize("argv", [["--lr", "inf"], ["--bias-init", "nan"], ["--bias-init", "inf"]], ids=["lr-inf", "bias-nan", "bias-inf"])
def test_non_finite_values_are_user_errors(argv):
    """Infinite or NaN numbers are rejected like other bad values: they would start training from
    (or step straight into) NaN parameters, which load_model later refuses to read back."""
    with pytest.raises(UserError) as info:
        parse_train_args(argv)
    assert argv[0] in str(info.value)


def test_every_config_field_has_a_flag():
    """The parser's destinations (besides help, version and config) are exactly the TrainConfig fields."""
    parser = train_parser()
    dests = {a.dest for a in parser._actions if a.option_strings} - {"help", "version", "config"}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}


def test_parser_defaults_are_config_defaults():
    """Every flag's default equals the TrainConfig default of its field."""
    defaults = vars(train_parser().parse_args([]))
    defaults.pop("config")
    for field in dataclasses.fields(TrainConfig):
        value = defaults[field.name]
        expected = field.default
        assert (tuple(value) if field.name == "hidden" else value) == expected, field.name


def test_commands_table():
    """The other commands exist alongside the default 'train', each with its own function."""
    assert set(cli.COMMANDS) == {"train", "launch", "download", "evaluate", "predict", "resume-ranks", "bench", "study", "plot", "scaling"}
    for name in set(cli.COMMANDS) - {"train"}:
        assert callable(cli.COMMANDS[name]) and cli.COMMANDS[name] is not cli.COMMANDS["train"]
    from pnn_mpi.training.options import train_parser

    epilog = train_parser().epilog  # --help's list of the other commands names every one
    assert all(f"  {name} " in epilog for name in set(cli.COMMANDS) - {"train"})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(epochs=0),
        dict(lr=0.0),
        dict(momentum=1.0),
        dict(lr_decay=0.0),
        dict(activation="nope"),
        dict(batch_size=0),
        dict(batch_size="most"),
        dict(sync="bogus"),
        dict(hidden=(0,)),
        dict(train_size=-5),
        dict(seed=-1),
        dict(dtype="int8"),
        dict(eval_every=-1),
        dict(test_size=0),
        dict(init="zeros"),
        dict(output="hinge"),
    ],
)
def test_train_config_validates_directly(kwargs):
    """TrainConfig itself rejects every bad value (the TOML and flag paths both end here)."""
    with pytest.raises(UserError):
        TrainConfig(**kwargs)


def test_train_config_as_dict_round_trip():
    """as_dict gives plain values (hidden as a list) that rebuild the same config."""
    cfg = TrainConfig(hidden=(64, 32), batch_size="full", sync="steps:5", shuffle=False)
    record = cfg.as_dict()
    assert record["hidden"] == [64, 32]
    assert TrainConfig(**record) == cfg


def test_a_command_line_flag_wins_before_or_after_config(tmp_path):
    """Issue 11: README said only flags typed after --config win; every command-line flag does."""
    path = tmp_path / "run.toml"
    path.write_text("lr = 0.2\nepochs = 7\n")
    assert parse_train_args(["--lr", "0.01", "--config", str(path)]).lr == 0.01
    assert parse_train_args(["--config", str(path), "--lr", "0.01"]).lr == 0.01
    assert parse_train_args(["--config", str(path)]).epochs == 7
    text = " ".join(train_parser().format_help().split())
    assert "a flag given on the command line wins, before or after --config" in text
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "flags typed after it win" not in readme


def test_version_and_program_name(monkeypatch, capsys):
    from pnn_mpi import __version__

    with pytest.raises(SystemExit) as info:
        parse_train_args(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"pnn_mpi {__version__}\n"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pnn-mpi"])
    assert train_parser().prog == "pnn-mpi"
    monkeypatch.setattr(sys, "argv", ["/x/pnn_mpi/__main__.py"])
    assert train_parser().prog == "python -m pnn_mpi"


@pytest.mark.parametrize(
    "word, expected",
    [
        ("evalute", "did you mean 'evaluate'?"),
        ("lanch", "did you mean 'launch'?"),
        ("predcit", "did you mean 'predict'?"),
        ("trian", "did you mean 'train'?"),
        ("xyzzy", "the commands are train, launch, download, evaluate, predict"),
    ],
)
def test_a_mistyped_command_gets_one_line_with_a_suggestion(word, expected):
    """A real ``python -m pnn_mpi WORD``: one line naming the likely command, exit 2, nothing started."""
    proc = subprocess.run([sys.executable, "-m", "pnn_mpi", word, "--epochs", "1"], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pnn_mpi: error: unknown command '{word}': {expected}"), proc.stderr
    assert proc.stdout == ""
