"""The fine-tuning methods a run can use: their names and their knobs as frozen data (layer 0: no torch).

A run's config (``robusttune.config.TrainConfig``) holds the common settings (optimisation, schedule, data,
device) and ``method: {name: <one of METHODS>, <that method's knobs>}``. Each method's knobs are validated by its
own model below (unknown keys rejected with a suggestion); what the method computes lives in
``robusttune.method.<name>`` (registered under the same name, ``robusttune.method.registry``).

| name             | what it trains                                                   | its knobs              |
|------------------|------------------------------------------------------------------|------------------------|
| `ft`             | vanilla fine-tuning: cross-entropy, every weight                 | -                      |
| `lp`             | linear probe: cross-entropy, the zero-shot head only             | -                      |
| `lp_ft`          | LP for the first `lp_fraction` of the steps, then all weights    | `lp_fraction`          |
| `l2sp`           | cross-entropy + `strength`/2 ||w - w_0||^2 (pre-trained weights) | `strength`             |
| `flyp`           | CLIP's contrastive loss on images and class captions, both towers | -                      |
| `lipsum`         | CE + the zero-shot model's image-text logits on random texts kept | `reg_weight`, `texts`, `text_length` |
| `masked_distill` | the paper's method: CE + distillation on masked images           | region, refill, ...    |

Spaces and flags name knobs flat (``w_distill``, ``region``); ``nest`` moves them under ``method`` for the
trial's method: the one rule that maps the two spellings.
"""

from __future__ import annotations

import difflib
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from robusttune.frozen import Frozen


class Region(StrEnum):
    """Which patches the counterfactual masks: by CAM (object / context), at random, or none (clean images)."""

    OBJECT = "object"
    CONTEXT = "context"
    RANDOM = "random"
    NONE = "none"


class Refill(StrEnum):
    NONE = "none"  # masked patches are dropped from attention (see robusttune.method.refill)
    SINGLE = "single"
    MULTI = "multi"


class CamMethod(StrEnum):
    RELEVANCE = "relevance"
    GRADCAM = "gradcam"


class DistillKind(StrEnum):
    FEATURE = "feature"
    LOGIT = "logit"


class DistillNorm(StrEnum):
    VARIANCE = "variance"  # feature MSE / teacher feature variance (default; weights portable across models)
    NONE = "none"  # the paper's plain MSE


# The official example script's default for each (region, refill) pair (ViT-B/32): the CAM threshold for object and
# context masks, the masking probability for random masks.
PAPER_THRESHOLDS: dict[tuple[Region, Refill], float] = {
    (Region.RANDOM, Refill.NONE): 0.75, (Region.RANDOM, Refill.SINGLE): 0.5, (Region.RANDOM, Refill.MULTI): 0.5,
    (Region.OBJECT, Refill.NONE): 0.3, (Region.OBJECT, Refill.SINGLE): 0.3, (Region.OBJECT, Refill.MULTI): 0.6,
    (Region.CONTEXT, Refill.NONE): 0.6, (Region.CONTEXT, Refill.SINGLE): 0.5, (Region.CONTEXT, Refill.MULTI): 0.3,
}


class MethodName(StrEnum):
    FT = "ft"
    LP = "lp"
    LP_FT = "lp_ft"
    L2SP = "l2sp"
    FLYP = "flyp"
    LIPSUM = "lipsum"
    MASKED_DISTILL = "masked_distill"


DEFAULT_METHOD = MethodName.MASKED_DISTILL  # the paper's method: what robusttune is for


class MergeName(StrEnum):
    """The post-hoc merges of a sweep's models (``robusttune.search.merges``; the rules in ``robusttune.method.merge``)."""

    UNIFORM_SOUP = "uniform_soup"
    GREEDY_SOUP = "greedy_soup"
    MODEL_STOCK = "model_stock"


class Ft(Frozen):
    """Vanilla fine-tuning: cross-entropy on the clean images, every weight trained."""

    name: Literal[MethodName.FT] = MethodName.FT


class Lp(Frozen):
    """Linear probing: cross-entropy, the zero-shot head trained, the image tower frozen."""

    name: Literal[MethodName.LP] = MethodName.LP


class LpFt(Frozen):
    """LP-FT (Kumar et al. 2022): the head alone for the first ``lp_fraction`` of the steps, then every weight."""

    name: Literal[MethodName.LP_FT] = MethodName.LP_FT
    lp_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the steps that train the head alone")


class L2sp(Frozen):
    """L2-SP (Li et al. 2018): cross-entropy plus ``strength / 2 * ||w - w_0||^2`` over every trained weight, w_0 the
    pre-trained (zero-shot) weights the run starts from."""

    name: Literal[MethodName.L2SP] = MethodName.L2SP
    strength: float = Field(0.01, ge=0.0, description="alpha of the penalty toward the pre-trained weights")


class Flyp(Frozen):
    """FLYP (Goyal et al. 2023): CLIP's contrastive loss between the images and captions of their classes (a zero-shot
    template each), the image and the text tower (and the logit scale) trained; the head is the fine-tuned text
    tower's zero-shot head, rebuilt at every evaluation."""

    name: Literal[MethodName.FLYP] = MethodName.FLYP


class Lipsum(Frozen):
    """Lipsum-FT (Nam et al. 2024): cross-entropy plus ``reg_weight`` times the mean squared gap between the fine-tuned
    and the zero-shot model's image-text logits on ``texts`` random token sequences of ``text_length`` tokens,
    drawn afresh each step, through the frozen text tower."""

    name: Literal[MethodName.LIPSUM] = MethodName.LIPSUM
    reg_weight: float = Field(1.0, ge=0.0, description="lambda: weight of the random-text logit regulariser")
    texts: int = Field(80, ge=1, le=4096, description="M: random token sequences per step")
    text_length: int = Field(8, ge=1, le=1024, description="L: random tokens per sequence (between start and end)")


class MaskedDistill(Frozen):
    """The paper's method: ``w_task * CE(student(x), y) + w_distill * distill(student(x_cf), teacher(x_cf))`` on
    counterfactual images ``x_cf`` (patches chosen by ``region`` and refilled by ``refill``); ``region: none``
    distils on the clean images. ``w_distill: 0`` trains as vanilla fine-tuning (method ``ft``)."""

    name: Literal[MethodName.MASKED_DISTILL] = MethodName.MASKED_DISTILL
    region: Region = Field(Region.OBJECT, description="which patches to mask: by the CAM (object: high, context: low), random, or none (distil on clean images)")
    refill: Refill = Field(Refill.SINGLE, description="what fills the masked patches: none (dropped), single (one donor image), multi (a donor per patch)")
    mask_threshold: float | None = Field(None, ge=0.0, le=1.0, description="the paper's form: mask patches whose max-normalised CAM is above (object) or at most (context) this; random: the masking probability; default the official value per (region, refill)")
    mask_ratio: float | None = Field(None, ge=0.0, le=1.0, description="mask exactly this share of the patches, ranked by the CAM (comparable across regions); instead of mask_threshold")
    cam: CamMethod = Field(CamMethod.RELEVANCE, description="class activation map: attention relevance (Chefer et al.) or Grad-CAM on the last block")
    w_task: float = Field(1.0, ge=0.0, description="weight of the cross-entropy on the clean images")
    w_distill: float = Field(1.0, ge=0.0, description="weight of the distillation on the counterfactual images (0: vanilla fine-tuning)")
    distill: DistillKind = Field(DistillKind.FEATURE, description="feature (MSE of image embeddings, the paper's) or logit (KL at kd_temperature)")
    distill_norm: DistillNorm = Field(DistillNorm.VARIANCE, description="feature distillation only: divide the MSE by the teacher features' variance (one weight means the same on every model) or not")
    kd_temperature: float = Field(10.0, gt=0.0, description="temperature of logit distillation (the loss is scaled by its square)")

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        region = data.get("region", Region.OBJECT)
        if str(region) == Region.NONE and "refill" not in data:
            data["refill"] = Refill.NONE
        refill = data.get("refill", Refill.SINGLE)
        if data.get("mask_threshold") is None and data.get("mask_ratio") is None:
            try:
                data["mask_threshold"] = PAPER_THRESHOLDS[(Region(str(region)), Refill(str(refill)))]
            except (KeyError, ValueError):  # region none, or an invalid value the field validation reports
                pass
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MaskedDistill:
        if self.region is Region.NONE:
            if self.refill is not Refill.NONE:
                raise ValueError("refill needs a masking region (region is 'none'); use refill 'none'")
            if self.mask_threshold is not None or self.mask_ratio is not None:
                raise ValueError("mask_threshold/mask_ratio need a masking region (region is 'none')")
        elif self.mask_threshold is not None and self.mask_ratio is not None:
            raise ValueError("give mask_threshold or mask_ratio, not both")
        return self

    @property
    def uses_masks(self) -> bool:
        return self.w_distill > 0 and self.region is not Region.NONE

    @property
    def uses_cam(self) -> bool:
        return self.uses_masks and self.region in (Region.OBJECT, Region.CONTEXT)


METHODS: dict[MethodName, type[Frozen]] = {MethodName.FT: Ft, MethodName.LP: Lp, MethodName.LP_FT: LpFt,
                                           MethodName.L2SP: L2sp, MethodName.FLYP: Flyp, MethodName.LIPSUM: Lipsum,
                                           MethodName.MASKED_DISTILL: MaskedDistill}

def _tag(value: Any) -> str | None:
    """The method a raw or validated ``method`` names (a callable discriminator: Frozen's before-validators on every
    field rule out pydantic's plain ``discriminator='name'``)."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return None if name is None else str(name)


MethodConfig = Annotated[Union[tuple(Annotated[model, Tag(name.value)] for name, model in METHODS.items())],  # noqa: UP007
                         Discriminator(_tag, custom_error_type="method", custom_error_message=
                                       "must name one of the methods " + ", ".join(m.value for m in MethodName))]

# ``preset: paper``: the official method defaults of main_distill.py (the training ones are in config.PAPER_PRESET)
PAPER_METHOD_PRESET: dict[str, Any] = {"distill": "feature", "distill_norm": "none", "w_task": 1.0, "w_distill": 30.0,
                                       "kd_temperature": 10.0, "cam": "relevance"}


def knob_names(name: MethodName | str) -> list[str]:
    """The knobs of method ``name`` (not its ``name`` field)."""
    return [k for k in METHODS[MethodName(str(name))].model_fields if k != "name"]


def all_knobs() -> dict[str, list[MethodName]]:
    """Every knob name, with the methods that take it."""
    found: dict[str, list[MethodName]] = {}
    for name in METHODS:
        for knob in knob_names(name):
            found.setdefault(knob, []).append(name)
    return found


def method_name(value: Any) -> MethodName:
    """A method's name from its spelling (``lp`` or ``{name: lp, ...}``); a one-line error for an unknown one."""
    raw = value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else value
    try:
        return MethodName(str(raw))
    except ValueError:
        names = [m.value for m in MethodName]
        close = difflib.get_close_matches(str(raw), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown method {raw!r}{hint}; methods: {', '.join(names)}") from None


def nest(flat: dict[str, Any], common: set[str] | frozenset[str]) -> dict[str, Any]:
    """A run's raw config with its knobs under ``method``: keys in ``common`` stay where they are, ``method`` (a
    name or a mapping) names the method (default ``masked_distill``), every knob name goes under it (a knob of
    another method is then rejected there, naming its owners) and anything else stays for the validation to reject
    with a suggestion."""
    given = flat.get("method", {})
    method = dict(given) if isinstance(given, dict) else {"name": given}
    method.setdefault("name", DEFAULT_METHOD)
    knobs = all_knobs()
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key == "method":
            continue
        if key not in common and key in knobs:
            method[key] = value
        else:
            out[key] = value
    out["method"] = method
    return out
