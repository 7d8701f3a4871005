"""Hyperparameters of the Step1X-Edit DiT and connector, presets, and detection from a state dict.

Upstream: official ``inference.py`` ``load_models`` (``Step1XParams``, full-size values) and
``modules/connector_edit.py`` ``Qwen2Connector``; the v1.1 code's ``--version`` switches; for v1.2 the diffusers
fork's ``transformer_step1x_edit.py`` and ``pipeline_step1x_edit_v1p2.py``. A version is data:
:class:`VersionSwitches` holds the few behavioural differences, the network is the same.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

# Not stored in the checkpoint: RoPE axes widths and base of the full model (official ``load_models``).
FULL_SIZE_AXES_DIM = (16, 56, 56)
ROPE_THETA = 10_000
# Widths fixed by the official classes (``Step1XEdit``, ``Qwen2Connector``): time-embedding features and pooled vector.
TIME_EMBED_DIM = 256
POOLED_DIM = 768
# Connector heads are not inferable from shapes; the full connector has head dim 128 (32 heads, ``Qwen2Connector``).
CONNECTOR_HEAD_DIM = 128

# Key that marks a v1.0 checkpoint: v1.1 dropped the pooled-vector scale factor (v1.1
# ``Qwen2Connector.__init__`` creates it only for v1.0; the official loader trusts ``--version`` instead).
V10_ONLY_KEY = "connector.scale_factor"
# Key that marks a v1.2 checkpoint: the quoted-token mapping, same name in both layouts (fork
# ``Step1XEditTransformer2DModel``, ``enable_text_token_mapping``).
V12_ONLY_KEY = "text_token_mapping.weight"
# Norm-rescaled CFG thresholds on σ ∈ [0, 1] (official ``ImageGenerator.denoise`` ``timesteps_truncate``; the
# fork pipelines' ``__call__``). 1.0 never triggers (v1.0);
# 0.93 is the official v1.1 rule; the diffusers fork compares σ·1000 with 0.93, i.e. σ > 0.00093,
# which renormalises every step: what the v1.2 release does.
RENORM_NEVER = 1.0
RENORM_OFFICIAL = 0.93
FORK_TIMESTEP_SCALE = 1000
RENORM_EVERY_STEP = RENORM_OFFICIAL / FORK_TIMESTEP_SCALE


@dataclass(frozen=True)
class DiTParams:
    """The ``Step1XParams`` fields of the official ``modules/model_edit.py``."""

    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = POOLED_DIM
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = FULL_SIZE_AXES_DIM
    theta: int = ROPE_THETA
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class ConnectorParams:
    """``Qwen2Connector`` sizes: VLM width in, refiner width out (= DiT ``context_in_dim``)."""

    in_channels: int = 3584
    hidden_size: int = 4096
    heads_num: int = 32
    depth: int = 2
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class VersionSwitches:
    """Everything that differs between releases that share the network (the v1.1 code's ``version``
    switches, the v1.2 fork pipeline).

    connector_scale_factor: pooled vector is ``global_proj_out(x̄·(1+s))`` (v1.0) or ``global_proj_out(x̄)``.
    ref_id_offset: reference tokens get ids ``(o, r+o, c+o)``; 0 in v1.0, 1 in v1.1; axis 0 only in v1.2.
    renorm_threshold: the release's default for norm-rescaled CFG, used on steps with ``t > threshold``;
        1.0 never triggers (v1.0), 0.93 is the v1.1 pipeline, 0.00093 (every step) the v1.2 release.
    supports_text_to_image: v1.1 added generation without a reference image (``generate_image`` with
        ``ref_images=None``).
    ref_id_offset_spatial: whether ``ref_id_offset`` also shifts rows and columns; v1.2 gives the
        reference tokens ``(1, r, c)`` (fork ``prepare_latents``).
    text_token_mapping: the DiT adds a linear map of the VLM's input embeddings on quoted tokens to the
        connector output (fork ``Step1XEditTransformer2DModel.forward``); the encoder then also yields
        those embeddings, their quote mask and Qwen-derived text ids, with no padding, so cond and uncond
        have their own lengths (fork ``encode_prompt``).
    input_resize: the reference image's resize to the working size (model/dit/image_io.py RESIZE_FILTERS):
        PIL bicubic (v1.0), PIL LANCZOS (v1.1; ``input_process_image``), torch bilinear with antialias on the
        float image (v1.2; fork ``encode_image``).
    output_rounding: the decoded image's 8-bit conversion (model/dit/image_io.py ROUNDINGS): ×255 truncated
        (v1.0, v1.1 ``to_pil_image`` in ``generate_image``) or rounded (v1.2, diffusers
        ``VaeImageProcessor.numpy_to_pil``).
    """

    connector_scale_factor: bool
    ref_id_offset: float
    renorm_threshold: float
    supports_text_to_image: bool
    ref_id_offset_spatial: bool = True
    text_token_mapping: bool = False
    input_resize: str = "lanczos"
    output_rounding: str = "truncate"


VERSIONS: dict[str, VersionSwitches] = {
    "v1.0": VersionSwitches(True, 0.0, RENORM_NEVER, False, input_resize="bicubic"),
    "v1.1": VersionSwitches(False, 1.0, RENORM_OFFICIAL, True),
    "v1.2": VersionSwitches(False, 1.0, RENORM_EVERY_STEP, False, ref_id_offset_spatial=False, text_token_mapping=True,
                            input_resize="bilinear-antialias", output_rounding="round"),
}


@dataclass(frozen=True)
class Step1XParams:
    dit: DiTParams = field(default_factory=DiTParams)
    connector: ConnectorParams = field(default_factory=ConnectorParams)
    version: str = "v1.1"

    @property
    def switches(self) -> VersionSwitches:
        return VERSIONS[self.version]


FULL_SIZE = {version: Step1XParams(version=version) for version in VERSIONS}


def params_from_config(config: Mapping, version: str) -> Step1XParams:
    """Build params from a manifest-style config: ``{"dit": {...}, "connector": {...}}``."""
    dit = dict(config["dit"])
    dit["axes_dim"] = tuple(dit["axes_dim"])
    return Step1XParams(DiTParams(**dit), ConnectorParams(**config["connector"]), version)


def block_indices(keys: Iterable[str], prefix: str) -> set[int]:
    """The numbers ``i`` of the blocks that keys ``<prefix>.<i>.…`` belong to (e.g. prefix ``double_blocks``)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return {int(m.group(1)) for key in keys if (m := pattern.match(key))}


def _block_count(shapes: Mapping[str, Sequence[int]], prefix: str) -> int:
    return max(block_indices(shapes, prefix), default=-1) + 1


def detect_params(
    shapes: Mapping[str, Sequence[int]],
    connector_heads: int | None = None,
    axes_dim: Sequence[int] | None = None,
    theta: int = ROPE_THETA,
) -> Step1XParams:
    """Infer the configuration from official-layout key names and shapes (the module paths of
    official ``Step1XEdit``).

    ``shapes`` maps key → shape (no prefix). ``connector_heads`` and ``axes_dim`` are not in the
    file: by default the connector gets head dim 128 and the RoPE axes are the full model's
    ``(16, 56, 56)`` scaled to the detected head dim.
    """
    hidden = shapes["img_in.weight"][0]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    if axes_dim is None:
        axes_dim = FULL_SIZE_AXES_DIM if head_dim == sum(FULL_SIZE_AXES_DIM) else _default_axes(head_dim)
    connector_hidden, connector_in = shapes["connector.S.input_embedder.weight"]
    if connector_heads is None:
        connector_heads = max(1, connector_hidden // CONNECTOR_HEAD_DIM)
    dit = DiTParams(
        in_channels=shapes["img_in.weight"][1],
        out_channels=shapes["final_layer.linear.weight"][0],
        vec_in_dim=shapes["vector_in.in_layer.weight"][1],
        context_in_dim=shapes["txt_in.weight"][1],
        hidden_size=hidden,
        mlp_ratio=_ratio_for_width(shapes["double_blocks.0.img_mlp.0.weight"][0], hidden),
        num_heads=hidden // head_dim,
        depth=_block_count(shapes, "double_blocks"),
        depth_single_blocks=_block_count(shapes, "single_blocks"),
        axes_dim=tuple(axes_dim),
        theta=theta,
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
    )
    refiner_mlp = shapes["connector.S.individual_token_refiner.blocks.0.mlp.fc1.weight"][0]
    connector = ConnectorParams(
        in_channels=connector_in,
        hidden_size=connector_hidden,
        heads_num=connector_heads,
        depth=_block_count(shapes, "connector.S.individual_token_refiner.blocks"),
        mlp_ratio=_ratio_for_width(refiner_mlp, connector_hidden),
    )
    return Step1XParams(dit, connector, detect_version(shapes))


def detect_version(keys) -> str:
    """The release a state dict belongs to, from its keys alone: ``connector.scale_factor`` → v1.0,
    ``text_token_mapping.weight`` → v1.2, otherwise v1.1."""
    if V10_ONLY_KEY in keys:
        return "v1.0"
    return "v1.2" if V12_ONLY_KEY in keys else "v1.1"


def _ratio_for_width(width: int, hidden: int) -> float:
    """An MLP ratio whose ``int(hidden · ratio)`` (how the layers size the MLP) gives back ``width``."""
    ratio = width / hidden
    return ratio if int(hidden * ratio) == width else (width + 0.5) / hidden


def _default_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a non-standard head dim like the full model (1/8 time axis, the rest split evenly, even widths)."""
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - first
    second = rest // 2 // 2 * 2
    return (first, second, rest - second)


def with_version(params: Step1XParams, version: str) -> Step1XParams:
    if version not in VERSIONS:
        raise ValueError(f"unknown Step1X-Edit version {version!r}; known: {', '.join(VERSIONS)}")
    return replace(params, version=version)
