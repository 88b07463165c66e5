"""Data prep: photos in, a prepared data set (TFRecord shards per split, ``metadata.json``) out.

One Apache Beam pipeline, stage by stage: ``sources`` lists what the data spec names,
``encode`` reads, digests, decodes, resizes and encodes each photo, ``split`` decides each
photo's split from its content, ``records`` writes (and reads back) the TFRecord shards, and
``pipeline`` joins them into the pipeline of named PTransforms. ``prepare`` is the data-prep
step's entry point: it picks the runner (this process, every core, or Dataflow), runs the
pipeline and checks the result.
"""
