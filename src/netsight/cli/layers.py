"""``netsight layers``: the model's layer names."""

from __future__ import annotations

import argparse

from netsight.cli import common

__all__ = ["COMMAND"]


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)


def run(args: argparse.Namespace) -> int:
    from netsight.capture import list_layers

    model = common.model_from_args(args)
    modules = dict(model.named_modules())
    for name in list_layers(model):
        print(f"{name}\t{type(modules[name]).__name__}")
    return 0


COMMAND = common.Command(
    "layers",
    "list the model's layer names (for --layers)",
    configure,
    run,
)
