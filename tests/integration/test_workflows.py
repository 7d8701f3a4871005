"""Every shipped API workflow runs on the tiny weights and yields an image of the expected size."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from queue_edit import output_images
from workflow_files import PHOTO_SIZE, TEST_SIZE_LEVEL, api_workflow_names, load_api, quick

from model.dit.sampling import size_for_level

RUN_TIMEOUT_S = 600


def expected_size(name: str, prompt: dict) -> tuple[int, int]:
    classes = {n["class_type"] for n in prompt.values()}
    if "EmptySD3LatentImage" in classes:                     # text-to-image: the requested size
        return (TEST_SIZE_LEVEL, TEST_SIZE_LEVEL)
    if "Step1XUnpackDecode" in classes:                       # edit: restored to the photo's size
        return PHOTO_SIZE
    return size_for_level(*PHOTO_SIZE, TEST_SIZE_LEVEL)       # core VAE decode: the working size


def test_every_workflow_is_shipped():
    shipped = set(api_workflow_names())
    assert {"step1x_edit", "step1x_edit_fp8", "step1x_edit_lowvram", "step1x_text_to_image"} <= shipped


@pytest.mark.parametrize("name", api_workflow_names())
def test_workflow_runs_and_saves_an_image_of_the_expected_size(client, name):
    prompt = quick(load_api(name))
    history = client.run(prompt, RUN_TIMEOUT_S)
    images = output_images(history)
    assert len(images) == 1
    with Image.open(io.BytesIO(client.download(images[0]))) as image:
        assert image.size == expected_size(name, prompt)
        assert image.mode == "RGB"


def test_a_batch_of_images_gives_a_batch_of_edits(client):
    prompt = quick(load_api("step1x_edit"))
    load = next(k for k, n in prompt.items() if n["class_type"] == "LoadImage")
    prompt["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": 2}}
    for node in prompt.values():
        if node["class_type"] in ("Step1XVLMEncode", "Step1XPackRefLatent"):
            node["inputs"]["image"] = ["20", 0]
    images = output_images(client.run(prompt, RUN_TIMEOUT_S))
    assert len(images) == 2
    for saved in images:
        with Image.open(io.BytesIO(client.download(saved))) as image:
            assert image.size == PHOTO_SIZE
