"""scripts/comfy_server.py tells the pack's own import failure from core's (the server keeps running)."""
from __future__ import annotations

import sys

import pytest

from tests.environment import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from comfy_server import PACK_NAME, ComfyServer, pack_import_failures  # noqa: E402

# ComfyUI's log lines (nodes.py load_custom_node / init_external_custom_nodes) with the ComfyUI tree inside a
# clone of this pack, as in CI.
CORE_FAILURE = (f"Cannot import /ci/{PACK_NAME}/.work/ComfyUI/comfy_extras/nodes_audio.py module for custom "
                "nodes: No module named 'torchaudio'")
PACK_FAILURE = f"   0.1 seconds (IMPORT FAILED): /tmp/base/custom_nodes/{PACK_NAME}"


@pytest.mark.parametrize("lines, fails", [([CORE_FAILURE, "IMPORT FAILED: nodes_audio.py"], False),
                                          ([CORE_FAILURE, PACK_FAILURE], True)])
def test_only_the_packs_import_failure_stops_the_server(tmp_path, lines, fails):
    server = ComfyServer(tmp_path / "ComfyUI", tmp_path)
    server.log_path.write_text("\n".join(lines) + "\n")
    if fails:
        with pytest.raises(RuntimeError, match="could not import the pack"):
            server._fail_on_pack_import_error()
    else:
        server._fail_on_pack_import_error()


def test_the_packs_failure_lines_are_the_ones_naming_its_custom_nodes_folder():
    assert pack_import_failures("\n".join([CORE_FAILURE, PACK_FAILURE])) == [PACK_FAILURE]
