"""``python -m tlp.components.lib.serving MODEL_DIR --port P [...]``: serves an exported model
directory with explicit options only (no registry, no environment); what infra validation and
the serving benchmark start. ``tlp serve`` is the user-facing command. The flags are the
declared serve options (``settings.ServeOptions``), so a new one needs no edit here."""

from __future__ import annotations

import argparse
import sys

from tlp.components.lib.options import add_flags, group_from_values
from tlp.components.lib.serving.app import create_app, run_server
from tlp.components.lib.serving.predictor import Predictor, load_card, warm_up
from tlp.components.lib.settings import ServeOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlp.components.lib.serving")
    parser.add_argument("model_dir")
    parser.add_argument("--version", default="", help="the version the routes and metadata report")
    add_flags(parser, [ServeOptions], "serve")
    args = parser.parse_args(argv)
    options = group_from_values(ServeOptions, vars(args))
    predictor = Predictor(args.model_dir, features=bool(options.drift_every))
    warm_up(predictor)
    card = load_card(args.model_dir, options.route_name, args.version)
    run_server(create_app(predictor, card, options), options.host, options.port, "warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
