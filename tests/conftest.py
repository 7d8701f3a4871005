import sys
from pathlib import Path

# The pack's packages (model/, nodes/) and the tests' helpers import from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
