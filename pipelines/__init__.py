"""The pipeline factory (training.py), the runners (runners.py) and the ``tlp`` CLI (cli.py)."""
