"""The mini world as a fine-tuning task: ID train images and the ID/OOD evaluation sets."""

from __future__ import annotations

from robusttune.data.mini.captions import CLASSNAMES
from robusttune.data.mini.world import WorldData
from robusttune.data.sets import EvalSet, TaskData, TensorImages
from robusttune.metrics import ID_TEST, ID_VAL


def mini_task(world: WorldData) -> TaskData:
    """``id_val_acc`` (validation), ``id_acc`` (ID test) and one ``ood_<shift>`` per shift."""
    def images(image_set) -> TensorImages:
        return TensorImages(image_set.images, image_set.labels)

    eval_sets = [EvalSet(ID_VAL, images(world.val)), EvalSet(ID_TEST, images(world.test))]
    eval_sets += [EvalSet(f"ood_{name}", images(image_set)) for name, image_set in world.ood.items()]
    return TaskData(train=images(world.train), eval_sets=tuple(eval_sets), num_classes=len(CLASSNAMES),
                    describe=lambda: f"mini world '{world.config.name}'")
