"""Words of the mini world: class names, digit colours, texture names, caption and prompt templates."""

from __future__ import annotations

CLASSNAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Digit colours (RGB in [0, 1]); index 0 (white) is the ID style.
DIGIT_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("white", (1.0, 1.0, 1.0)),
    ("red", (1.0, 0.15, 0.15)),
    ("green", (0.2, 1.0, 0.2)),
    ("blue", (0.25, 0.45, 1.0)),
    ("yellow", (1.0, 1.0, 0.1)),
    ("cyan", (0.1, 1.0, 1.0)),
    ("magenta", (1.0, 0.2, 1.0)),
    ("orange", (1.0, 0.6, 0.05)),
)

# One adjective per background texture, in texture-id order (see render.TEXTURES).
TEXTURE_WORDS: tuple[str, ...] = (
    "plain", "striped", "banded", "checkered", "diagonal", "dotted", "noisy", "gradient", "grid", "wavy",
)

# Zero-shot prompts: class names only (like ImageNet's templates, they never mention the background).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}.",
    "a picture of the number {}.",
    "the handwritten digit {}.",
    "an image of a {}.",
)


def caption(template: int, digit: int, colour: int | None, texture: int | None) -> str:
    """A pre-training caption; colour and texture are optional attributes (None = not mentioned)."""
    name = CLASSNAMES[digit]
    if colour is not None:
        name = f"{DIGIT_COLOURS[colour][0]} {name}" if template == 3 else name
    text = PROMPT_TEMPLATES[template].format(name)
    if colour is not None and template != 3:
        text = text.replace(" the digit ", f" the {DIGIT_COLOURS[colour][0]} digit ")
        text = text.replace(" the number ", f" the {DIGIT_COLOURS[colour][0]} number ")
        text = text.replace("the handwritten ", f"the {DIGIT_COLOURS[colour][0]} handwritten ")
    if texture is not None:
        text = text[:-1] + f" on a {TEXTURE_WORDS[texture]} background."
    return text


def vocabulary_text() -> list[str]:
    """Every caption the world can produce: the compact text vocabulary is built from these."""
    texts = []
    for template in range(len(PROMPT_TEMPLATES)):
        for digit in range(len(CLASSNAMES)):
            for colour in [None, *range(len(DIGIT_COLOURS))]:
                for texture in [None, *range(len(TEXTURE_WORDS))]:
                    texts.append(caption(template, digit, colour, texture))
    return texts
