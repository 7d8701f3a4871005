"""The v1.2 runtime inside ComfyUI (no server; nodes/runtime/v12_edit.py, nodes/encoders/v12_vlm.py,
nodes/runtime/model_folders.py): conditioning round trip, the v1.2 pixel paths, DiT folder listing, the seeded
VLM adapter, and a two-try reasoning edit through the real v1.2 editor (tiny DiT and VLM from
tests/tiny_models/make_tiny_v12.py, a stand-in VAE, scripted judge answers)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.environment import TINY_MODELS_DIR
from tests.golden import REPO_ROOT
from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import import_pack_module

PHOTO = REPO_ROOT / "workflows" / "input" / "chelsea_the_cat.png"


@pytest.fixture(scope="module")
def v12_edit():
    return import_node_module("nodes.runtime.v12_edit")


@pytest.fixture(scope="module")
def v12_vlm():
    return import_node_module("nodes.encoders.v12_vlm")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-v12")
    subprocess.run([sys.executable, str(TINY_MODELS_DIR / "make_tiny_v12.py"), str(out)], check=True)
    return out / "Step1X-Edit-v1p2"


def test_vae_pixels_are_the_bilinear_antialiased_float_image(v12_edit):
    image = Image.open(PHOTO).convert("RGB")
    pixels = v12_edit.vae_pixels(image, 256)
    sampling = import_pack_module("model.dit.sampling")
    width, height = sampling.size_for_level(*image.size, 256)
    assert pixels.shape == (1, height, width, 3) and pixels.dtype == torch.float32
    source = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(source, (height, width), mode="bilinear", antialias=True)
    assert torch.equal(pixels, expected.permute(0, 2, 3, 1).clamp(0, 1))
    lanczos = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    assert not np.allclose(pixels[0].numpy(), lanczos, atol=1 / 255), "VAE and VLM copies must differ"


def test_decoded_image_is_rounded_and_resized_back(v12_edit):
    decoded = torch.full((1, 32, 48, 3), 100.6 / 255)
    image = v12_edit.decoded_to_pil(decoded, (48, 32))
    assert image.size == (48, 32) and np.asarray(image).max() == 101   # rounded, not truncated to 100
    assert v12_edit.decoded_to_pil(decoded, (30, 20)).size == (30, 20)


def test_conditioning_carries_the_v12_extras_and_other_models_are_refused(v12_edit):
    length, width = 7, 16
    encoding = type("Enc", (), {})()
    encoding.embedding, encoding.text_embeds = torch.randn(1, length, width), torch.randn(1, length, width)
    encoding.mask = torch.ones(1, length, dtype=torch.long)
    encoding.text_mask = torch.zeros(1, length, dtype=torch.long)
    encoding.txt_ids = torch.randn(length, 3)
    [(embedding, options)] = v12_edit.to_conditioning(encoding)
    assert torch.equal(embedding, encoding.embedding) and options["step1x_edit"] == "v1.2"
    for key in ("txt_ids", "text_embeds", "text_mask"):
        assert torch.equal(options[key], getattr(encoding, key)), key
    assert torch.equal(options["attention_mask"], encoding.mask)
    with pytest.raises(ValueError, match="this MODEL is not Step1X-Edit; v1.2 conditioning needs"):
        v12_edit.check_v12_model(object())


def test_pipeline_folders_are_listed(pipeline, tmp_path):
    folders = import_node_module("nodes.runtime.model_folders")
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "Step1X-Edit-v1p2").symlink_to(pipeline, target_is_directory=True)
    (tmp_path / "not-a-model").mkdir()
    assert folders.list_dit_folders([str(tmp_path), str(tmp_path / "missing")]) == ["group/Step1X-Edit-v1p2"]
    assert folders.list_dit_folders([str(pipeline.parent)]) == ["Step1X-Edit-v1p2"]


def test_v12_loader_names_a_missing_folder_and_the_fix(pipeline, monkeypatch):
    v12 = import_node_module("nodes.node_v12")
    loader = v12.Step1XV12Loader
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda kind: [str(pipeline.parent)])
    assert loader.validate_inputs(pipeline.name, v12.FROM_PIPELINE) is True
    assert loader.validate_inputs("Step1X-Edit-v1p2-missing", v12.FROM_PIPELINE) == (
        "no folder 'Step1X-Edit-v1p2-missing' under models/diffusion_models: put the Step1X-Edit-v1p2 download "
        "(transformer/, text_encoder/, processor/) there and press R to refresh")
    assert loader.validate_inputs(pipeline.name, "Qwen-missing") == (
        "no folder 'Qwen-missing' under models/text_encoders: put it there and press R to refresh")
    with pytest.raises(FileNotFoundError, match="press R"):
        loader.execute("Step1X-Edit-v1p2-missing", "default", "auto", v12.FROM_PIPELINE)


class IdentityVAE:
    """A stand-in VAE: 'encode' averages 8×8 pixel blocks into 16 channels, 'decode' upsamples back."""


    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), 8)
        return pooled.repeat(1, 6, 1, 1)[:, :16]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(latent[:, :3], scale_factor=8).permute(0, 2, 3, 1).clamp(0, 1)


SCRIPT = {"description": "A red cat.", "consistency": '{"meets_instruction": "partial", "raw_score": 6, "reason": "r"}',
          "reflection": "<#Think> redder <#Reflection> Make the cat redder.",
          "score1": '{"score": [6, 5], "reasoning": "a"}',
          "score2": '{"score": [7, 8], "reasoning": "b"}'}


def test_reasoning_edit_on_the_tiny_models(v12_edit, v12_vlm, pipeline):
    """The node's pieces end to end: the loop drives the real v1.2 editor (tiny DiT and VLM, stand-in VAE);
    judging answers are scripted. Two tries: the reflection instruction edits the first output."""
    loader = import_pack_module("nodes.node_loader")
    thinker = import_pack_module("model.reasoning.thinker")
    hf = import_pack_module("nodes.encoders.vlm_v12_hf")

    model = loader.load_step1x_model(str(pipeline), "default", "auto")
    net = model.model.diffusion_model
    vlm = v12_vlm.V12VLM(hf.locate_v12_text_encoder(pipeline))
    image = Image.open(PHOTO).convert("RGB")

    def editor():
        return v12_edit.V12Editor(model, vlm, IdentityVAE(), size_level=256, seed=3, steps=2, cfg=6.0,
                                 threshold=net.params.switches.renorm_threshold)

    result = thinker.reasoning_edit(editor(), thinker.Thinker(lambda request: SCRIPT[request.kind]), image,
                                    "Make it red.", max_tries=2)
    assert [t.prompt for t in result.tries] == ["Make it red.", " Make the cat redder."]
    assert result.tries[1].input_image is result.tries[0].output_image
    assert [output.size for output in result.images] == [image.size, image.size]
    text = thinker.describe(result, "Make it red.")
    assert "Try 2: edited the output of try 1 with ' Make the cat redder.'" in text
    assert text.endswith("Chosen: try 2 of 2")   # equal scores, no <#Success>: the later try
    fresh = editor()
    first = fresh(image, "Make it red.", "")
    assert np.array_equal(np.asarray(first), np.asarray(result.images[0])), "one seed, one first try"
    assert not np.array_equal(np.asarray(fresh(image, "Make it red.", "")), np.asarray(first)), \
        "the editor's second draw must use new noise"


def test_seeded_vlm_gives_each_call_its_own_seed(v12_vlm):
    seen = []
    runner = type("Runner", (), {"generate": lambda self, request, seed: seen.append(seed) or f"answer {seed}"})()
    vlm = type("VLM", (), {"runner": lambda self: runner})()
    generate = v12_vlm.SeededVLM(vlm, seed=2**64 - 2)
    assert [generate("request") for _ in range(3)] == ["answer 18446744073709551614", "answer 18446744073709551615",
                                                       "answer 0"]
    assert seen == [2**64 - 2, 2**64 - 1, 0] and generate.calls == 3


def test_managed_hf_runner_keeps_one_model_per_slot(monkeypatch):
    """The cache both transformers routes share: built once per (folder, dtype), rebuilt for another folder in
    the same slot (the old one dropped), and slots (VLM Encode's HF folder, the v1.2 VLM) kept apart."""
    managed = import_node_module("nodes.encoders.managed_hf_model")
    monkeypatch.setattr(managed, "_patchers", {})
    built = []

    def build(folder):
        def make(dtype, device):
            runner = type("Runner", (), {"model": torch.nn.Linear(2, 2), "folder": folder})()
            built.append((folder, dtype, device))
            return runner
        return make

    first = managed.managed_hf_runner("a", "one", build("one"))
    assert managed.managed_hf_runner("a", "one", build("one")) is first and len(built) == 1
    other_slot = managed.managed_hf_runner("b", "one", build("one"))
    assert other_slot is not first and len(built) == 2
    replaced = managed.managed_hf_runner("a", "two", build("two"))
    assert replaced.folder == "two" and len(built) == 3
    assert managed.managed_hf_runner("b", "one", build("one")) is other_slot and len(built) == 3
    assert set(managed._patchers) == {"a", "b"}
    assert built[0][2] == managed.mm.text_encoder_offload_device()
