"""Kubeflow Pipelines v2 components of the transfer-learning pipeline.

Each module holds one thin ``@dsl.component`` wrapper; the work is done by the importable,
tested functions in ``components.lib``.
"""
