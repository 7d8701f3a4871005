"""Kohya-format Step1X-Edit LoRA files: parsing, checks and the official merge.

Official ``library/lora_module.py`` (``LoRANetwork``, ``create_network_from_weights``,
``LoRAInfModule.merge_to``). A file holds, per module, ``lora_unet_<module path with "." → "_">``
plus ``.lora_down.weight [rank, in]``, ``.lora_up.weight [out, rank]`` and ``.alpha`` (0-dim).

Underscores in those names are ambiguous (``img_attn_qkv`` could be ``img.attn_qkv``), so names are
never turned back into paths by replacing characters: like the official loader, every Linear of the
real model gets its kohya name and the file's names are looked up in that table. The official loader
puts LoRA modules only on the Linears inside the double/single blocks and on the input layers it finds
by name filter; keys for any other module (final layer, connector, modules that do not exist) are
skipped silently there — here they are returned so the caller can log them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..dit.layers import is_linear

# LoRANetwork.LORA_PREFIX_DIT / LORA_PREFIX_TEXT_ENCODER ("lora_te3" is the Qwen2.5-VL encoder there).
DIT_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te"
DOWN = "lora_down.weight"
UP = "lora_up.weight"
ALPHA = "alpha"
KOHYA_SUFFIXES = (DOWN, UP, ALPHA)
# LoRANetwork.DIT_TARGET_REPLACE_MODULE_{DOUBLE,SINGLE}: every Linear inside these blocks is a target.
BLOCK_CONTAINERS = ("double_blocks.", "single_blocks.")
# LoRANetwork in_dims filters: any other Linear whose kohya name contains one of these is a target
# (official ``LoRANetwork``: img_in, time_in.*, vector_in.*, txt_in; Step1X-Edit has no guidance_in).
INPUT_LAYER_FILTERS = ("_img_in", "_time_in", "_vector_in", "_guidance_in", "_txt_in")
EXAMPLES_SHOWN = 3

# Key patterns of LoRAs made for other models or in other formats, with what they look like.
FOREIGN_FORMATS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks|label_emb)_"),
     "a Stable Diffusion 1.x/2.x/SDXL UNet LoRA (kohya 'lora_unet_input_blocks_…' keys)"),
    (re.compile(r"^lora_unet_(down_blocks|mid_block|up_blocks)_"),
     "a Stable Diffusion UNet LoRA with diffusers module names ('lora_unet_down_blocks_…')"),
    (re.compile(r"(^|[._])(single_)?transformer_blocks[._]\d+[._]"),
     "a diffusers/PEFT-style transformer LoRA ('transformer.single_transformer_blocks…lora_A', as made "
     "for FLUX.1 by diffusers, ai-toolkit or SimpleTuner)"),
    (re.compile(r"\.(hada_w[12]_[ab]|lokr_w[12](_[ab])?|oft_blocks|oft_diag)$"),
     "a LyCORIS file (LoHa/LoKr/OFT); the official loader handles plain LoRA only"),
    (re.compile(r"\.lora_[AB](\.default)?\.weight$"),
     "a PEFT-format LoRA ('lora_A'/'lora_B' names) rather than the kohya format"),
    (re.compile(r"^lora_te\d?_"), "a text-encoder LoRA ('lora_te…' keys); text-encoder LoRAs are not supported"),
)


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this Step1X-Edit model; the message names the problem and the fix."""


@dataclass(frozen=True)
class LoraWeights:
    """One module's LoRA: ``up [out, rank]``, ``down [rank, in]``, ``alpha`` as stored in the file."""

    up: Tensor
    down: Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def effective_alpha(self) -> float:
        """``LoRAModule.__init__``: "if alpha == 0 or None, alpha is rank (no scaling)"."""
        return self.alpha if self.alpha != 0 else float(self.rank)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank


@dataclass(frozen=True)
class KohyaTarget:
    """A Linear of the model under its kohya name: ``weight_key`` (official key), ``shape [out, in]``,
    ``covered`` = the official loader would put a LoRA module on it."""

    weight_key: str
    shape: tuple[int, int]
    covered: bool


@dataclass(frozen=True)
class ParsedLora:
    """What a kohya file does to a model.

    modules: official weight key → its LoRA, for every target module present in the file.
    ignored: kohya module names in the file the official loader skips silently (final layer,
        connector, names of no module of this model), sorted.
    text_encoder: ``lora_te…`` module names (text-encoder LoRAs are not applied by this pack), sorted.
    """

    modules: dict[str, LoraWeights]
    ignored: tuple[str, ...]
    text_encoder: tuple[str, ...]

    def ignored_summary(self) -> str | None:
        """One log line naming how many module names are skipped, with examples; ``None`` if none are."""
        parts = []
        if self.ignored:
            parts.append(f"{len(self.ignored)} module(s) the official Step1X-Edit loader ignores "
                         f"(not a LoRA target or not in this model), e.g. {_examples(self.ignored)}")
        if self.text_encoder:
            parts.append(f"{len(self.text_encoder)} text-encoder module(s) (not supported), "
                         f"e.g. {_examples(self.text_encoder)}")
        return "; ".join(parts) if parts else None


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(names[:EXAMPLES_SHOWN])
    return shown + (", …" if len(names) > EXAMPLES_SHOWN else "")


def linear_weight_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Module path → ``(out, in)`` for every Linear of ``model`` (comfy.ops Linears included)."""
    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if is_linear(module)
    }


def kohya_targets(linear_shapes: Mapping[str, Sequence[int]]) -> dict[str, KohyaTarget]:
    """Kohya module name → target, for every Linear path in ``linear_shapes`` (path → ``(out, in)``)."""
    targets: dict[str, KohyaTarget] = {}
    for path, shape in linear_shapes.items():
        name = DIT_PREFIX + path.replace(".", "_")
        if name in targets:
            raise LoraError(
                f"two Linears of this model, {targets[name].weight_key} and {path}.weight, share the kohya name "
                f"{name}, so a LoRA file cannot say which of them it changes. Kohya LoRAs address the Step1X-Edit "
                "DiT by its own layer names: apply the LoRA to the model from 'Load Step1X Model' or 'Load "
                "Step1X-Edit v1.2' (through the 'Step1X LoRA' node), not to a model whose layers were renamed or "
                "wrapped.")
        covered = path.startswith(BLOCK_CONTAINERS) or any(f in name for f in INPUT_LAYER_FILTERS)
        targets[name] = KohyaTarget(f"{path}.weight", (int(shape[0]), int(shape[1])), covered)
    return targets


def _group_by_module(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``"<module>.<suffix>"`` keys → module → suffix → tensor (keys without a dot form their own module)."""
    modules: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        module, _, suffix = key.partition(".")
        modules.setdefault(module, {})[suffix] = tensor
    return modules


def foreign_format(keys: Sequence[str]) -> str | None:
    """What a file whose keys are not Step1X-Edit kohya LoRA keys looks like, or ``None`` if unknown."""
    for pattern, description in FOREIGN_FORMATS:
        if any(pattern.search(key) for key in keys):
            return description
    return None


def _no_target_error(state: Mapping[str, Tensor]) -> LoraError:
    keys = sorted(state)
    looks_like = foreign_format(keys)
    if looks_like is None:
        looks_like = "no LoRA this pack knows" if keys else "an empty file"
    return LoraError(
        f"this file has no LoRA for any Step1X-Edit module ({len(keys)} tensors, e.g. {_examples(keys)}). "
        f"It looks like {looks_like}. Use a LoRA trained for Step1X-Edit with the official kohya-format keys "
        "('lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', …)."
    )


def _module_weights(name: str, tensors: Mapping[str, Tensor]) -> LoraWeights:
    unknown = sorted(set(tensors) - set(KOHYA_SUFFIXES))
    if unknown:
        looks_like = foreign_format([f"{name}.{s}" for s in unknown])
        raise LoraError(
            f"{name} has tensors the official Step1X-Edit LoRA format does not have ({', '.join(unknown)})"
            + (f": it looks like {looks_like}." if looks_like else ".")
            + " Only plain kohya LoRA (lora_down / lora_up / alpha) can be merged the official way."
        )
    missing = [s for s in (DOWN, UP) if s not in tensors]
    if missing:
        raise LoraError(f"{name} has no {' or '.join(missing)}: the file is incomplete or damaged; download it again.")
    if ALPHA not in tensors:
        raise LoraError(
            f"{name} has no .alpha. The official Step1X-Edit loader stops with an error on such files "
            "(library/lora_module.py: alpha is required), and so does this node rather than guess the scale. "
            "If the trainer meant alpha = rank, add '<module>.alpha' = rank tensors to the file."
        )
    up, down = tensors[UP], tensors[DOWN]
    if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
        raise LoraError(
            f"{name}: lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} are not a Linear LoRA pair "
            "(expected [out, rank] and [rank, in]); the file is damaged or not a Step1X-Edit LoRA."
        )
    return LoraWeights(up, down, float(tensors[ALPHA].float().item()))


def _shape_error(mismatched: list[tuple[str, KohyaTarget, LoraWeights]]) -> LoraError:
    name, target, lora = mismatched[0]
    return LoraError(
        f"{len(mismatched)} LoRA module(s) do not fit this model: e.g. {name} is [out {lora.up.shape[0]}, "
        f"in {lora.down.shape[1]}] but the model's {target.weight_key} is {list(target.shape)}. The key names are "
        "the FLUX.1 / Step1X-Edit block names, so this is likely a FLUX.1 LoRA or a LoRA for a Step1X-Edit "
        "model of another size; it cannot be applied to this model."
    )


def parse_kohya_lora(state: Mapping[str, Tensor], linear_shapes: Mapping[str, Sequence[int]]) -> ParsedLora:
    """Resolve a kohya LoRA state dict against the model's Linears (``path → (out, in)``).

    Raises :class:`LoraError` for a file made for another model or in another format, a target
    module without alpha (the official loader errors too), an incomplete pair or shapes that do
    not fit.
    """
    targets = kohya_targets(linear_shapes)
    modules: dict[str, LoraWeights] = {}
    ignored, text_encoder = [], []
    mismatched: list[tuple[str, KohyaTarget, LoraWeights]] = []
    for name, tensors in _group_by_module(state).items():
        target = targets.get(name)
        if name.startswith(TEXT_ENCODER_PREFIX):
            text_encoder.append(name)
        elif target is None or not target.covered:
            ignored.append(name)
        else:
            lora = _module_weights(name, tensors)
            if (lora.up.shape[0], lora.down.shape[1]) != target.shape:
                mismatched.append((name, target, lora))
            modules[target.weight_key] = lora
    if mismatched:
        raise _shape_error(mismatched)
    if not modules:
        raise _no_target_error(state)
    return ParsedLora(modules, tuple(sorted(ignored)), tuple(sorted(text_encoder)))


def lora_delta(lora: LoraWeights, multiplier: float) -> Tensor:
    """``m · (up @ down) · alpha/rank`` in float32 ``[out, in]``, in the official operation order."""
    return multiplier * (lora.up.float() @ lora.down.float()) * lora.scale


def merge_weight(weight: Tensor, lora: LoraWeights, multiplier: float) -> Tensor:
    """``cast_back(W₃₂ + m · (up₃₂ @ down₃₂) · alpha/rank)`` (``LoRAInfModule.merge_to``)."""
    return (weight.float() + lora_delta(lora, multiplier).to(weight.device)).to(weight.dtype)


def merge_lora(state: Mapping[str, Tensor], parsed: ParsedLora, multiplier: float) -> dict[str, Tensor]:
    """The merged value of every weight the LoRA changes (official key → tensor); ``state`` is not modified."""
    return {key: merge_weight(state[key], lora, multiplier) for key, lora in parsed.modules.items()}

