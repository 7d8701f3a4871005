#!/usr/bin/env python3
"""Queue a Step1X-Edit edit on a running ComfyUI server and save the result.

    python scripts/queue_edit.py --image photo.png --instruction "make it snow" --out edited.png \
        [--server 127.0.0.1:8188] [--seed 42] [--workflow workflows/api/step1x_edit.json]

Uploads the image (POST /upload/image), fills the API-format workflow (LoadImage image, the
Step1XVLMEncode instruction, the Step1XSampler seed), queues it (POST /prompt), polls /history until
the prompt finishes, downloads the first saved image (GET /view) and writes it to --out.
On any failure it prints the server's own message and exits with status 1.
Standard library only, so it runs with any Python 3.9+.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "step1x_edit.json"
POLL_INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 60


class ComfyError(RuntimeError):
    """The server refused or failed a prompt; the message is the server's own explanation."""


class ComfyClient:
    def __init__(self, server: str):
        self.base_url = server if server.startswith("http") else f"http://{server}"
        self.client_id = uuid.uuid4().hex

    def get_json(self, path: str):
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())

    def post_json(self, path: str, payload) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.base_url}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                body = response.read()
                return response.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, {"error": {"message": body.decode(errors="replace")}}

    def upload_image(self, path: Path, subfolder: str = "") -> str:
        """Upload into the server's input folder; returns the name LoadImage expects."""
        boundary = uuid.uuid4().hex
        fields = [("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)]
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields)
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode()
        body += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.base_url}/upload/image", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            info = json.loads(response.read())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, prompt: dict) -> str:
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise ComfyError(format_validation_error(body))
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout_s: float) -> dict:
        """Poll /history until the prompt succeeded; raise ComfyError with the server's message otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "success":
                return entry
            if status.get("status_str") == "error":
                raise ComfyError(format_execution_error(status))
            time.sleep(POLL_INTERVAL_S)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s")

    def run(self, prompt: dict, timeout_s: float) -> dict:
        return self.wait(self.queue(prompt), timeout_s)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def download(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.base_url}/view?{query}", timeout=HTTP_TIMEOUT_S) as response:
            return response.read()


def format_validation_error(body: dict) -> str:
    """A /prompt 400 answer as text: the top message plus every node error."""
    lines = [body.get("error", {}).get("message", "prompt refused")]
    details = body.get("error", {}).get("details")
    if details:
        lines.append(details)
    for node_id, node in body.get("node_errors", {}).items():
        for error in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: "
                         f"{error.get('details')}")
    return "\n".join(lines)


def format_execution_error(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return "the prompt was interrupted"
    return f"the prompt failed: {json.dumps(status)[:2000]}"


def output_images(history_entry: dict) -> list[dict]:
    return [image for output in history_entry.get("outputs", {}).values()
            for image in output.get("images", []) if image.get("type") == "output"]


def node_of_class(prompt: dict, class_type: str) -> dict:
    nodes = [node for node in prompt.values() if node.get("class_type") == class_type]
    if len(nodes) != 1:
        raise ComfyError(f"the workflow must contain exactly one {class_type} node, found {len(nodes)}")
    return nodes[0]


# Where a workflow's seed lives: Step1X Sampler, or core KSampler / RandomNoise (SamplerCustomAdvanced).
SEED_INPUTS = {"Step1XSampler": "seed", "KSampler": "seed", "RandomNoise": "noise_seed"}


def fill_edit_workflow(prompt: dict, image_name: str, instruction: str, seed: int, prefix: str) -> dict:
    node_of_class(prompt, "LoadImage")["inputs"]["image"] = image_name
    node_of_class(prompt, "Step1XVLMEncode")["inputs"]["instruction"] = instruction
    seeded = [node for node in prompt.values() if node.get("class_type") in SEED_INPUTS]
    if len(seeded) != 1:
        raise ComfyError(f"the workflow must contain exactly one of {', '.join(SEED_INPUTS)}, found {len(seeded)}")
    seeded[0]["inputs"][SEED_INPUTS[seeded[0]["class_type"]]] = seed
    node_of_class(prompt, "SaveImage")["inputs"]["filename_prefix"] = prefix
    return prompt


def edit(server: str, image: Path, instruction: str, seed: int, out: Path, workflow: Path,
         timeout_s: float) -> Path:
    client = ComfyClient(server)
    prompt = json.loads(workflow.read_text())
    name = client.upload_image(image)
    fill_edit_workflow(prompt, name, instruction, seed, prefix=f"step1x_edit/{out.stem}")
    images = output_images(client.run(prompt, timeout_s))
    if not images:
        raise ComfyError("the prompt finished but saved no image (is there a SaveImage node?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(client.download(images[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:8188", help="host:port of a running ComfyUI")
    parser.add_argument("--image", type=Path, required=True, help="photo to edit")
    parser.add_argument("--instruction", required=True, help='edit instruction, e.g. "add a red hat"')
    parser.add_argument("--seed", type=int, default=42, help="sampler seed (official default 42)")
    parser.add_argument("--out", type=Path, default=Path("edited.png"), help="where to write the result")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format workflow JSON")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the result")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        print(f"error: image not found: {args.image}", file=sys.stderr)
        return 1
    try:
        out = edit(args.server, args.image, args.instruction, args.seed, args.out, args.workflow, args.timeout)
    except ComfyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ConnectionError) as error:
        print(f"error: cannot reach ComfyUI at {args.server}: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
