"""The drift watch's worker process with its model's features signature batch-sensitive
(``BatchSensitive``): ``drift_monitor.WORKER_MODULE`` set to this module runs it, so a test reaches
the features the worker computes, in a process of its own."""

import json
import sys


class BatchSensitive:
    """The features signature, its pooled features scaled by 1 + 1e-6 x the call's number: as
    MobileNetV2 on CPU gives one image slightly different features alone than inside a batch
    (measured at alpha 1.0: about 1e-6 of their scale). The session's model (alpha 0.35, 64 px) gives
    nearly every image equal ones, which would hide the defect."""

    def __init__(self, signature):
        self.signature, self.structured_outputs, self.calls = signature, signature.structured_outputs, 0

    def __call__(self, **inputs):
        self.calls += 1
        outputs = dict(self.signature(**inputs))
        outputs["pooled_features"] = outputs["pooled_features"] * (1.0 + 1e-6 * self.calls)
        return outputs


def batch_sensitive(load_servable):
    """``model.load_servable`` with the features signature wrapped in ``BatchSensitive``."""
    from tlp.components.lib import model as model_lib

    return lambda directory, signature="serving_default": (
        BatchSensitive(load_servable(directory, signature)) if signature == model_lib.FEATURES_SIGNATURE
        else load_servable(directory, signature))


if __name__ == "__main__":
    from tlp.components.lib import drift_monitor
    from tlp.components.lib import model as model_lib

    model_lib.load_servable = batch_sensitive(model_lib.load_servable)
    drift_monitor.work(json.loads(sys.argv[1]))
