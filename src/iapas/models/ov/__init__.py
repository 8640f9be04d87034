"""The OpenVINO runtime (``--runtime openvino``, the ``openvino`` extra): the detector's and
SAM's forwards converted once to OpenVINO IR and run on the CPU.

Only the forwards change: pre- and post-processing, NMS, the size filter, fusion and decisions
stay iapas's shared code. :mod:`iapas.models.ov.cache` converts and caches the IR (keyed on the
source model's fingerprint, the openvino version and :data:`~iapas.models.ov.cache.CONVERTER_VERSION`)
and compiles it; :mod:`iapas.models.ov.gdino` runs Grounding DINO (and MM-Grounding DINO /
LLMDet, the same transformers class); SAM's converted parts live beside it.
"""
