"""The method core: pure tensor functions with explicit generators (no model, data or search imports).

- ``cam``: attention relevance and Grad-CAM from captured activations and their gradients.
- ``masking``: object / context / random patch selection, threshold and ratio forms.
- ``refill``: donor choice and patch-aligned refilling.
- ``losses``: task + distillation losses.
- ``wise``: WiSE-FT weight interpolation; ``merge``: soups and Model Stock.
- one module per fine-tuning method (``ft``, ``lp``, ``lp_ft``, ``l2sp``, ``flyp``, ``lipsum``, ``masked_distill``), each a
  ``step.MethodStep``; ``registry`` names them (their knobs: ``robusttune.methods``).
"""
