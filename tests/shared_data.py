"""Where the tests' data lives: ../shared beside the repository, or $VQRT_SHARED (what
`make test SHARED=DIR` passes). It holds golden set A (made by the upstream taming-transformers
code; MANIFEST.txt) and real photos and segmentation maps (data/README)."""
import os
from pathlib import Path

SHARED = Path(os.environ.get("VQRT_SHARED")
              or Path(__file__).resolve().parents[2] / "shared").resolve()
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
