"""`lcr-sdk train`'s options are TrainConfig's fields: each default and help text is written once, in the config."""

from dataclasses import fields

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from lcr_sdk.cli import app
from lcr_sdk.train.config import TrainConfig

# The options of a run that are not stored in its checkpoint (where to write, how to run).
RUN_ONLY = {"out", "resume", "save_every", "on_bad", "device", "nproc_per_node", "progress"}


def _train_command():
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group.commands["train"]


def test_train_options_are_the_config_fields_plus_the_run_options():
    params = {p.name: p for p in _train_command().params}
    options = {name for name, p in params.items() if isinstance(p, TyperOption)}
    assert options == {f.name for f in fields(TrainConfig)} | RUN_ONLY
    assert [p.name for p in params.values() if isinstance(p, TyperArgument)] == ["data"]


def test_train_option_defaults_and_help_are_the_configs():
    params = {p.name: p for p in _train_command().params}
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        option = params[f.name]
        assert option.default == getattr(defaults, f.name), f.name
        assert option.help == f.metadata["help"], f.name
        flag = "--" + f.name.replace("_", "-")
        assert flag in option.opts, (f.name, option.opts)  # the flag every error message names


def test_train_help_lists_every_config_option_with_its_default():
    from typer.testing import CliRunner

    text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "[default: 224]" in text and "[default: gfb]" in text
