"""Accuracy benchmark: train the default recipe on clothing-small and record accuracy and time.

    python bench/bench_accuracy.py [--backbone lite0] [--out runs/bench-accuracy] [--no-docs]
    python bench/bench_accuracy.py --from-bundle runs/clothing-lite0 --command "imgclf train ..."

Trains with ``imgclf.training.train`` (the same code as ``imgclf train``) on the train split,
selects the epoch on validation, and reports top-1/top-3/loss/macro-F1 on every split, the test
split's per-class precision/recall/F1, and the wall time of each phase. Rewrites the "Accuracy and
training time" section of docs/benchmarks.md unless ``--no-docs``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clothing_dir, markdown_table, update_docs

SECTION = "## Accuracy and training time"
#: Best published results on this test split (Keras Xception/InceptionV3 fine-tuning).
BASELINE = "88-90.6%"


def _load_avg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def render(result: object, command: str, wall_s: float, load_before: str) -> str:
    from imgclf.training.trainer import TrainResult

    assert isinstance(result, TrainResult)
    manifest = result.bundle.manifest
    rows = [
        [split, f"{m['top1']:.2%}", f"{m['top3']:.2%}", f"{m['loss']:.3f}", f"{m['macro_f1']:.3f}"]
        for split, m in result.metrics.items()
    ]
    evaluation = json.loads((result.bundle.root / "report" / "evaluation.json").read_text())
    per_class = evaluation["splits"]["test"]["per_class"]
    class_rows = [
        [
            name,
            f"{c['precision']:.3f}",
            f"{c['recall']:.3f}",
            f"{c['f1']:.3f}",
            str(c["support"]),
        ]
        for name, c in per_class.items()
    ]
    timings = manifest.training["timings"]
    training = manifest.training
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Backbone `{manifest.backbone}` (ImageNet weights, offline package), serving input "
        f"{manifest.preprocess_config.input_size} px, fine-tuned at {training['train_size']} px; "
        f"{training['epochs_run']} fine-tuning epochs run, best epoch {training['best_epoch']} "
        f"(0 = head only). Torch {training['torch_version']}, {training['threads']} threads, "
        f"{platform.machine()}. Load average before the run: {load_before}.",
        "",
        markdown_table(["split", "top-1", "top-3", "loss", "macro F1"], rows),
        "",
        f"Best published result on this test split: {BASELINE} (Keras Xception/InceptionV3).",
        "",
        "Test split per class:",
        "",
        markdown_table(["class", "precision", "recall", "F1", "images"], class_rows),
        "",
        "Training wall time by phase (seconds):",
        "",
        markdown_table(
            ["decode + checks", "head stage", "fine-tuning", "final evaluation", "total"],
            [
                [
                    f"{timings.get(k, 0):.0f}"
                    for k in (
                        "load_and_decode_s",
                        "head_s",
                        "finetune_s",
                        "final_eval_s",
                        "total_s",
                    )
                ]
            ],
        ),
        "",
        f"Wall time of the whole benchmark process: {wall_s / 60:.1f} min (goal: under 30 min).",
    ]
    return "\n".join(lines)


def facts(result: object) -> dict[str, str]:
    """The numbers README quotes (``<!-- bench:accuracy.* -->``), as it shows them."""
    from imgclf.training.trainer import TrainResult

    assert isinstance(result, TrainResult)
    metrics = result.metrics
    return {
        "accuracy.test_top1": f"{metrics['test']['top1']:.1%}",
        "accuracy.validation_top1": f"{metrics['validation']['top1']:.1%}",
        "accuracy.train_minutes": f"{result.timings['total_s'] / 60:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=clothing_dir())
    parser.add_argument("--out", type=Path, default=Path("runs/bench-accuracy"))
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--from-bundle",
        type=Path,
        default=None,
        help="record an already trained bundle (its report/ and manifest) instead of training",
    )
    parser.add_argument("--command", default=None, help="with --from-bundle: how it was trained")
    args = parser.parse_args()
    if args.from_bundle is not None:
        from imgclf.bundle import load_bundle
        from imgclf.training.trainer import TrainResult

        bundle = load_bundle(args.from_bundle)
        timings = bundle.manifest.training["timings"]
        result = TrainResult(bundle, bundle.manifest.metrics, timings["total_s"], None, timings)
        text = render(result, args.command or "imgclf train", timings["total_s"], "not recorded")
        print(text)
        if not args.no_docs:
            update_docs(SECTION, text, facts(result))
        return
    from imgclf.training.recipe import TrainConfig
    from imgclf.training.trainer import train

    options: dict[str, object] = {"backbone": args.backbone, "name": "clothing-lite0"}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    load_before = _load_avg()
    started = time.perf_counter()
    result = train(args.data, args.out, TrainConfig(**options))  # type: ignore[arg-type]
    wall_s = time.perf_counter() - started
    assert result is not None
    command = "python bench/bench_accuracy.py " + " ".join(sys.argv[1:])
    text = render(result, command.strip(), wall_s, load_before)
    print(text)
    if not args.no_docs:
        update_docs(SECTION, text, facts(result))


if __name__ == "__main__":
    main()
