"""A result with NaN or ±inf stops the sampler with the likely causes instead of decoding to a black image.

Every sampling path (one CFG batch, one call per branch, several GPUs) goes through
``model.dit.sampling.denoise``, which checks the latent once at the end.
"""
from __future__ import annotations

import pytest
import torch

from model.dit import sampling
from model.dit.branch_sampling import BranchText, sample_per_branch
from model.weights.loader import load_step1x_dit
from model.dit.sampling import NonFiniteResult
from tests.golden import model_sets

V11 = {s.version: s for s in model_sets()}["v1.1"]
CAUSES = ("damaged weights in the model file", "download it again", "fp16 overflow", "a LoRA with bad values")


def assert_names_causes(message: str, first_step: int, steps: int) -> None:
    assert f"NaN or infinite values, first after step {first_step} of {steps}," in message
    assert "black image" in message
    for cause in CAUSES:
        assert cause in message, cause


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_the_first_non_finite_step_is_named(bad_value):
    def predict(x, t):
        velocity = torch.full_like(x, bad_value if t < 0.5 else 1.0)
        return velocity, velocity

    timesteps = torch.linspace(1, 0, 6)  # steps start at t = 1.0, 0.8, 0.6, 0.4, 0.2: the 4th is the first bad one
    seen = []
    with pytest.raises(NonFiniteResult) as error:
        sampling.denoise(predict, torch.zeros(1, 4, 64), timesteps, cfg=1.0, renorm_threshold=1.0,
                         callback=lambda step, total, x, x0: seen.append(step))
    assert_names_causes(str(error.value), 4, 5)
    assert seen == [0, 1, 2, 3, 4], "the loop runs to the end; the check is made once, after it"


@pytest.fixture(scope="module")
def nan_model():
    """The tiny v1.1 DiT with one NaN in the final layer's weight (as a damaged download would hold)."""
    cfg = V11.manifest["config"]
    model, _ = load_step1x_dit(str(V11.folder / "tiny_model.safetensors"), dtype=torch.float32,
                               connector_heads=cfg["connector"]["heads_num"], axes_dim=cfg["dit"]["axes_dim"])
    with torch.no_grad():
        model.final_layer.linear.weight[0, 0] = float("nan")
    return model.eval()


@pytest.fixture(scope="module")
def edit_case():
    t = V11.tensors("sampling.safetensors")
    latent_h, latent_w = t["noise"].shape[2:]
    return t, sampling.get_schedule(3, (latent_h // 2) * (latent_w // 2))


def test_batched_sampling_with_nan_weights_raises(nan_model, edit_case):
    t, timesteps = edit_case
    inputs = sampling.SamplingInputs(noise=t["noise"], ref_latent=t["ref_latent"], cond=t["llm_embedding"][:1],
                                     cond_mask=t["mask"][:1], uncond=t["llm_embedding"][1:],
                                     uncond_mask=t["mask"][1:], timesteps=timesteps)
    with pytest.raises(NonFiniteResult) as error, torch.no_grad():
        sampling.sample(nan_model, inputs, cfg=6.0, renorm_threshold=0.93, switches=nan_model.params.switches,
                        compute_dtype=torch.float32, device=torch.device("cpu"))
    assert_names_causes(str(error.value), 1, 3)


def test_per_branch_sampling_with_nan_weights_raises(nan_model, edit_case):
    t, timesteps = edit_case
    zeros = torch.zeros(t["llm_embedding"].shape[1], 3)
    cond = BranchText(t["llm_embedding"][:1], t["mask"][:1], zeros)
    uncond = BranchText(t["llm_embedding"][1:], t["mask"][1:], zeros)
    with pytest.raises(NonFiniteResult) as error, torch.no_grad():
        sample_per_branch(nan_model, t["noise"], t["ref_latent"], cond, uncond, timesteps, 6.0, 0.93, torch.float32,
                          torch.device("cpu"))
    assert_names_causes(str(error.value), 1, 3)
