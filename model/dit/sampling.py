"""Sampling as plain functions (official ``inference.py`` ``ImageGenerator`` / ``sampling.py``).

Sizing rule, 2×2 latent packing, position ids, the shifted schedule, seeded noise, and the one
Euler loop with cond+uncond batched CFG. Latents here are already in the model's scaling
(``0.3611·(z − 0.1159)``); the caller converts from/to raw VAE latents.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from .params import VersionSwitches

LATENT_CHANNELS = 16
PATCH = 2  # 2×2 latent pixels per token (official ``ImageGenerator.prepare``)
VAE_DOWNSCALE = 8
PIXELS_PER_TOKEN = VAE_DOWNSCALE * PATCH  # sides must be multiples of 16
# get_schedule's shift line through (256 tokens, 0.5) and (4096 tokens, 1.15) (official sampling.py).
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096
# Norm-rescaled CFG (official ``ImageGenerator.process_diff_norm``): guidance divided by ‖c − u‖^0.4
# for tokens whose norm exceeds 1.
RENORM_EXPONENT = 0.4
RENORM_MIN_NORM = 1.0
# The DiT runs the instruction (branch 0) and the negative prompt (branch 1) every step (official
# ``ImageGenerator.denoise`` batches both).
CFG_BRANCHES = 2


def size_for_level(width: int, height: int, size_level: int) -> tuple[int, int]:
    """Area-preserving resize target with sides floored to multiples of 16 (official
    ``ImageGenerator.input_process_image``).

    Raises ``ValueError`` when a side rounds to 0 (extreme aspect ratios), which the official code
    only reports as a PIL failure.
    """
    ratio = width / height
    if width > height:
        new_w = math.ceil(math.sqrt(size_level * size_level * ratio))
        new_h = math.ceil(new_w / ratio)
    else:
        new_h = math.ceil(math.sqrt(size_level * size_level / ratio))
        new_w = math.ceil(new_h * ratio)
    new_w = new_w // PIXELS_PER_TOKEN * PIXELS_PER_TOKEN
    new_h = new_h // PIXELS_PER_TOKEN * PIXELS_PER_TOKEN
    if new_w == 0 or new_h == 0:
        raise ValueError(
            f"a {width}×{height} image at size level {size_level} resizes to {new_w}×{new_h}: the aspect ratio "
            f"is too extreme. Crop the image closer to square or raise the size level."
        )
    return new_w, new_h


def pack_latent(z: Tensor) -> Tensor:
    """``[B, 16, h, w]`` → ``[B, (h/2)(w/2), 64]``: token ``r·(w/2) + c``, feature ``ch·4 + dy·2 + dx``."""
    return rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


def unpack_latent(x: Tensor, latent_h: int, latent_w: int) -> Tensor:
    """``[B, N, 64]`` → ``[B, 16, latent_h, latent_w]`` (inverse of :func:`pack_latent`)."""
    return rearrange(
        x, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=math.ceil(latent_h / PATCH), w=math.ceil(latent_w / PATCH),
        ph=PATCH, pw=PATCH,
    )


def image_ids(latent_h: int, latent_w: int, offset: float = 0.0, device=None) -> Tensor:
    """Token ids ``[N, 3]`` float32: ``(o, r + o, c + o)`` in token order (official
    ``ImageGenerator.prepare``)."""
    rows, cols = latent_h // PATCH, latent_w // PATCH
    ids = torch.full((rows, cols, 3), float(offset), dtype=torch.float32, device=device)
    ids[..., 1] += torch.arange(rows, dtype=torch.float32, device=device)[:, None]
    ids[..., 2] += torch.arange(cols, dtype=torch.float32, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


def reference_ids(latent_h: int, latent_w: int, switches: VersionSwitches, device=None) -> Tensor:
    """Reference-token ids ``[N, 3]``: ``(o, r+o, c+o)`` (v1.0/v1.1, official ``ImageGenerator.prepare``) or
    ``(o, r, c)`` (v1.2, fork ``prepare_latents``), with ``o = switches.ref_id_offset``."""
    if switches.ref_id_offset_spatial:
        return image_ids(latent_h, latent_w, switches.ref_id_offset, device=device)
    ids = image_ids(latent_h, latent_w, device=device)
    ids[:, 0] = switches.ref_id_offset
    return ids


def sequence_ids(latent_h: int, latent_w: int, switches: VersionSwitches, with_reference: bool,
                 device=None) -> Tensor:
    """Ids of the DiT's image sequence ``[N or 2N, 3]``: noisy tokens, then reference tokens for an edit."""
    ids = image_ids(latent_h, latent_w, device=device)
    if not with_reference:
        return ids
    return torch.cat((ids, reference_ids(latent_h, latent_w, switches, device=device)))


def schedule_shift(image_seq_len: int) -> float:
    """μ on the line through (256, 0.5) and (4096, 1.15), extrapolated outside (official
    ``sampling.py`` ``get_lin_function`` / ``get_schedule``)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return slope * image_seq_len + (BASE_SHIFT - slope * BASE_SEQ_LEN)


def get_schedule(num_steps: int, image_seq_len: int, shift: bool = True) -> Tensor:
    """``num_steps + 1`` times from 1 to 0 in float32; ``image_seq_len`` counts NOISE tokens only.

    Same float32 tensor arithmetic as the official ``get_schedule`` (bit-exact).
    """
    t = torch.linspace(1, 0, num_steps + 1)
    if shift:
        e_mu = math.exp(schedule_shift(image_seq_len))
        t = e_mu / (e_mu + (1 / t - 1))
    return t


def make_noise(seed: int, batch: int, latent_h: int, latent_w: int) -> Tensor:
    """Float32 noise ``[B, 16, h, w]`` from a CPU generator: one seed, the same noise on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((batch, LATENT_CHANNELS, latent_h, latent_w), generator=generator, dtype=torch.float32)


def guided_velocity(cond: Tensor, uncond: Tensor, cfg: float, renormalise: bool) -> Tensor:
    """CFG; when ``renormalise``, the guidance of tokens with ``n = ‖c − u‖ > 1`` is divided by ``n^0.4``."""
    diff = cond - uncond
    if renormalise:
        norm = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
        divisor = torch.where(norm > RENORM_MIN_NORM, norm.pow(RENORM_EXPONENT), torch.ones_like(norm))
        diff = diff / divisor
    return uncond + cfg * diff


StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""``callback(step, total, x, x0)`` after each step; ``x`` / ``x0`` are packed tokens ``[B, N, 64]``
(the new latent and the data estimate of that step)."""


@dataclass(frozen=True)
class SamplingInputs:
    """What one edit (or text-to-image) run needs, all for B images.

    noise: ``[B, 16, h, w]``; ref_latent: ``[B, 16, h, w]`` or None (text-to-image);
    cond / uncond: VLM embeddings ``[B, L, D]`` with masks ``[B, L]``; timesteps: ``get_schedule`` output.
    """

    noise: Tensor
    ref_latent: Tensor | None
    cond: Tensor
    cond_mask: Tensor
    uncond: Tensor
    uncond_mask: Tensor
    timesteps: Tensor

    def branch_text(self, branches: Sequence[int], device) -> tuple[Tensor, Tensor, Tensor]:
        """The text of the CFG ``branches`` (0: instruction, 1: negative prompt), branch-major on ``device``.

        → embedding ``[R·B, L, D]``, mask ``[R·B, L]`` and text ids ``[1, L, 3]`` float32, all zero
        (official ``ImageGenerator.prepare``), for R = ``len(branches)``.
        """
        embeddings, masks = (self.cond, self.uncond), (self.cond_mask, self.uncond_mask)
        embedding = torch.cat([embeddings[branch] for branch in branches]).to(device)
        mask = torch.cat([masks[branch] for branch in branches]).to(device)
        txt_ids = torch.zeros((1, embedding.shape[1], 3), dtype=torch.float32, device=device)
        return embedding, mask, txt_ids


Predictor = Callable[[Tensor, float], tuple[Tensor, Tensor]]
"""``predict(x, t) → (cond, uncond)``: the model's velocity for the noisy tokens ``x [B, N, 64]`` at
time ``t``, for the instruction and the negative prompt, each ``[B, N, 64]`` float32."""


def denoise(
    predict: Predictor,
    x: Tensor,
    timesteps: Tensor,
    cfg: float,
    renorm_threshold: float,
    callback: StepCallback | None = None,
) -> Tensor:
    """The one Euler loop: ``x ← x + (t_{i+1} − t_i)·v`` with guided ``v`` (official ``ImageGenerator.denoise``).

    How the model is called (one CFG batch, one call per branch, several GPUs) is the predictor's
    business; schedule, guidance, update and callback are the same for all of them.
    Raises :class:`NonFiniteResult` when the latent holds NaN or ±inf at the end.
    """
    times = timesteps.tolist()
    total = len(times) - 1
    # One flag per step, written on the device so the loop never waits for the host; read once at the end.
    finite = torch.ones(total, dtype=torch.bool, device=x.device)
    for step, (t_curr, t_next) in enumerate(zip(times[:-1], times[1:])):
        cond, uncond = predict(x, t_curr)
        velocity = guided_velocity(cond, uncond, cfg, renormalise=t_curr > renorm_threshold)
        x_next = x + (t_next - t_curr) * velocity
        finite[step] = torch.isfinite(x_next).all()
        if callback is not None:
            callback(step, total, x_next, x - t_curr * velocity)
        x = x_next
    check_finite(finite)
    return x


class NonFiniteResult(RuntimeError):
    """The sampled latent holds NaN or ±inf (it would decode to a black or broken image)."""


NON_FINITE_CAUSES = (
    "Likely causes: damaged weights in the model file (download it again); an fp16 overflow (weights converted "
    "to fp16 beyond its ±65504 range, or the text encoder or VAE run in fp16: use bf16 or fp32); a LoRA with bad "
    "values (remove it or lower its strength)."
)


def check_finite(finite: Tensor) -> None:
    """Raise :class:`NonFiniteResult` naming the first bad step and the likely causes.

    ``finite``: ``[steps]`` bool, whether the latent after each step was finite; one host sync.
    """
    flags = finite.tolist()
    if all(flags):
        return
    raise NonFiniteResult(
        f"the sampled latent holds NaN or infinite values, first after step {flags.index(False) + 1} of "
        f"{len(flags)}, so it would decode to a black image. {NON_FINITE_CAUSES}"
    )


@dataclass(frozen=True)
class ImageTokens:
    """The DiT's image sequence for one run, built once (official ``ImageGenerator.prepare``) and
    rewritten in place every step by :meth:`write_step`.

    noise: packed noise ``[B, N, 64]`` float32, the loop's starting latent;
    model_input: ``[R·B, N or 2N, 64]`` in the compute dtype, R blocks of B rows (one block per CFG
    branch the model call holds), each row the noisy tokens then, for an edit, the reference tokens;
    ids: position ids of one row ``[N or 2N, 3]`` (:func:`sequence_ids`);
    timestep: ``[R·B]`` in the compute dtype, the step's time for every row.
    """

    noise: Tensor
    model_input: Tensor
    ids: Tensor
    timestep: Tensor
    latent_h: int
    latent_w: int

    @classmethod
    def prepare(cls, noise: Tensor, ref_latent: Tensor | None, switches: VersionSwitches, branches: int,
                compute_dtype: torch.dtype, device: torch.device) -> ImageTokens:
        """Pack ``noise [B, 16, h, w]`` and ``ref_latent`` (``[B or 1, 16, h, w]``, None for text-to-image),
        both in the model's latent scaling, for a model call holding ``branches`` CFG branches."""
        batch, _, latent_h, latent_w = noise.shape
        x = pack_latent(noise.to(device=device, dtype=torch.float32))
        ids = sequence_ids(latent_h, latent_w, switches, ref_latent is not None, device=device)
        row = [x.to(compute_dtype)]
        if ref_latent is not None:
            row.append(pack_latent(ref_latent).to(device=device, dtype=compute_dtype).expand(batch, -1, -1))
        model_input = torch.cat(row, dim=1).repeat(branches, 1, 1)
        timestep = torch.empty(branches * batch, dtype=compute_dtype, device=device)
        return cls(x, model_input, ids, timestep, latent_h, latent_w)

    @property
    def batch(self) -> int:
        return self.noise.shape[0]

    @property
    def n_noise(self) -> int:
        """N, the noisy tokens at the start of each row (the ones the model's prediction is read from)."""
        return self.noise.shape[1]

    def write_step(self, x: Tensor, t: float) -> None:
        """Put the step's latent ``x [B, N, 64]`` into every branch block and ``t`` into :attr:`timestep`."""
        self.model_input[:, :self.n_noise].unflatten(0, (-1, self.batch)).copy_(x)
        self.timestep.fill_(t)

    def denoise_to_latent(self, predict: Predictor, timesteps: Tensor, cfg: float, renorm_threshold: float,
                          callback: StepCallback | None = None) -> Tensor:
        """:func:`denoise` from :attr:`noise` → final latent ``[B, 16, h, w]`` float32."""
        x = denoise(predict, self.noise, timesteps, cfg, renorm_threshold, callback)
        return unpack_latent(x, self.latent_h, self.latent_w)


def sample(
    model,
    inputs: SamplingInputs,
    cfg: float,
    renorm_threshold: float,
    switches: VersionSwitches,
    compute_dtype: torch.dtype,
    device: torch.device,
    callback: StepCallback | None = None,
) -> Tensor:
    """Flow-matching sampling with cond+uncond batched CFG → final latent ``[B, 16, h, w]`` float32.

    The model is called on the CFG batch ``[cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]`` of
    ``[noisy tokens; reference tokens]``; only the first N outputs (the noisy half) are used.
    ``device`` is where the activations live (the model's load device). Positions are computed once,
    the model input buffer is allocated once; the loop itself does not synchronise with the host.
    """
    tokens = ImageTokens.prepare(inputs.noise, inputs.ref_latent, switches, CFG_BRANCHES, compute_dtype, device)
    llm_embedding, mask, txt_ids = inputs.branch_text(range(CFG_BRANCHES), device)
    pe = model.positions(txt_ids, tokens.ids[None])
    batch = tokens.batch

    def predict(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tokens.write_step(x, t)
        txt, vec = model.embed(tokens.timestep, llm_embedding, tokens.timestep, mask, compute_dtype)
        pred = model.blocks(model.img_in(tokens.model_input), txt, vec, pe)[:, :tokens.n_noise].float()
        return pred[:batch], pred[batch:]

    return tokens.denoise_to_latent(predict, inputs.timesteps, cfg, renorm_threshold, callback)
