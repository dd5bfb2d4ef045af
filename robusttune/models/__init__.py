"""Models: the only package that imports open_clip.

- ``clip``: CLIP by model name + pretrained tag or local file; zero-shot heads; ImageNet preprocessing.
- ``tiny``: the mini world's tiny CLIP with a compact vocabulary.
- ``classifier``: ``ImageClassifier`` (image tower + zero-shot head) and the frozen teacher copy.
- ``vit``: the attention-capturing forward over open_clip's ViT.
"""

from robusttune.models.classifier import ClassifierPass, ImageClassifier, frozen_copy

__all__ = ["ClassifierPass", "ImageClassifier", "frozen_copy"]
