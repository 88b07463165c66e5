"""The tested core shared by the components: data, model, strategy, training, evaluation,
report and registry. Importing this package is cheap: TensorFlow is imported where used."""
