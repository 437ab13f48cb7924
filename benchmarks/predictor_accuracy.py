"""The torch-free Predictor on a bundle, scored on the embedded test split written out as image files.

What a device sees: PNG files on disk -> Predictor (numpy + PIL + one backend) -> labels or masks. The split is
written as files first (digits: the raw 8x8 images; digit-scenes: the 64x64 scenes and their label masks), then a
child process scores the Predictor with each backend and checks that torch was never imported. Printed beside
the bundle's PyTorch reference (report.json), against the goals the Predictor must reach: >= 97% top-1 on digits,
the `evaluate` mIoU within 0.5 point on digit-scenes.

    python benchmarks/predictor_accuracy.py lkca-bundle
    python benchmarks/predictor_accuracy.py seg-bundle --backends openvino --markdown
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

# Runs in the child: only the Predictor and numpy; exits non-zero if torch got imported on the way.
SCORE = """
import json, sys
from pathlib import Path
import numpy as np
from lkca_deploy.runtime import Predictor
from lkca_runtime.metrics import confusion_matrix, miou_from_confusion

bundle, backend, folder, precision = sys.argv[1:5]
truth = json.loads((Path(folder) / "truth.json").read_text())
predictor = Predictor(bundle, backend=backend, precision=precision or None)
files = [str(Path(folder) / name) for name in truth["files"]]
if predictor.task == "segmentation":
    from PIL import Image
    masks = predictor(files)
    labels = [np.asarray(Image.open(Path(folder) / m)) for m in truth["masks"]]
    confusion = sum(confusion_matrix(p, t, len(predictor.class_names)) for p, t in zip(masks, labels))
    score = miou_from_confusion(confusion)
else:
    top = predictor(files, top_k=1)
    score = float(np.mean([r[0][0] == label for r, label in zip(top, truth["labels"])]))
assert "torch" not in sys.modules, "the Predictor imported torch"
print(json.dumps({"score": score, "engine": predictor.engine["precision"] + " " + predictor.engine["backend"]}))
"""


def write_split(data: str, folder: Path) -> int:
    """The test split as image files plus truth.json; returns the number of images."""
    from PIL import Image

    if data == "digits":
        from lkca_deploy.data.datasets import digits_images, digits_split_indices

        images, labels = digits_images()
        index = digits_split_indices()[1]
        files = [f"{i:04d}.png" for i in index]
        for name, i in zip(files, index):
            Image.fromarray(images[i]).save(folder / name)
        truth = {"files": files, "labels": [str(labels[i]) for i in index]}
    elif data == "digit-scenes":
        from lkca_deploy.data.scenes import make_scenes

        scenes = make_scenes("test")
        files = [f"{i:04d}.png" for i in range(len(scenes))]
        masks = [f"{i:04d}.mask.png" for i in range(len(scenes))]
        for i, (name, mask) in enumerate(zip(files, masks)):
            Image.fromarray(scenes.images[i]).save(folder / name)
            Image.fromarray(scenes.masks[i]).save(folder / mask)
        truth = {"files": files, "masks": masks}
    else:
        raise SystemExit(f"--data must be digits or digit-scenes, not {data!r}")
    (folder / "truth.json").write_text(json.dumps(truth))
    return len(files)


def score(bundle: Path, backend: str, folder: Path, precision: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCORE, str(bundle), backend, str(folder), precision],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--precisions", default=",fp32", help="comma list; empty = the Predictor's own choice")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    report = json.loads((args.bundle / "reports" / "report.json").read_text())
    data, task = report["dataset"], report["task"]
    key = "miou" if task == "segmentation" else "top1"
    metric = "mIoU %" if task == "segmentation" else "top-1 %"
    reference = report["engines"][0]["parity"][f"{key}_reference"]  # PyTorch FP32 on the same split
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        count = write_split(data, folder)
        rows = []
        for backend, precision in itertools.product(args.backends.split(","), args.precisions.split(",")):
            result = score(args.bundle, backend, folder, precision)
            if "error" in result:
                rows.append([backend, "-", "-", "-", result["error"]])
                continue
            gap = 100 * (result["score"] - reference)
            rows.append([backend, result["engine"] + ("" if precision else " (auto)"), f"{100 * result['score']:.2f}", f"{gap:+.2f}", "torch never imported"])
    common.print_header(f"Predictor on {count} {data} test images written as PNG (bundle {args.bundle})", 1,
                        [f"PyTorch reference (report.json): {metric} {100 * reference:.2f}"], markdown=args.markdown)
    common.print_table(["backend", "engine", metric, "vs PyTorch (pt)", "note"], rows, markdown=args.markdown)
    return 0 if all(row[1] != "-" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
