"""How far single models are from what the data allows: ensembles of trained bundles.

    python bench/bench_ensemble.py BUNDLE [BUNDLE ...] [--update-docs]

Runs every bundle (its exported model if it has one, else the PyTorch weights) over the
validation and test splits, then scores every combination of bundles by averaging their
probabilities. It also counts the images that every bundle gets wrong: those bound what any
recipe built on the same backbones can be expected to reach. Rewrites the "Accuracy ceiling"
section of docs/benchmarks.md with ``--update-docs``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clothing_dir, command_line, markdown_table, update_docs

if TYPE_CHECKING:
    from imgclf.data import ImageRecord

SECTION = "## Accuracy ceiling: ensembles of trained models"
SPLITS = ("validation", "test")


def _probabilities(
    bundle_dir: Path, artifact: str, records: dict[str, list[ImageRecord]]
) -> dict[str, np.ndarray]:
    """Class probabilities of one bundle for each split's records."""
    from imgclf.bundle import load_bundle
    from imgclf.evaluation.runner import ModelRunner

    runner = ModelRunner.open(load_bundle(bundle_dir, verify=False), artifact)
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        probs, readable, _ = runner.predict_rows(records[split], split=split, progress=True)
        if not readable.all():
            sys.exit(f"{bundle_dir}: {int((~readable).sum())} unreadable {split} images")
        out[split] = probs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders to combine")
    parser.add_argument("--artifact", default="auto", help="artifact to run (default: auto)")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs/benchmarks.md")
    args = parser.parse_args()

    from imgclf.data import load_dataset

    dataset = load_dataset(clothing_dir())  # checked once, shared by every bundle
    records = {split: dataset.splits[split] for split in SPLITS}
    labels = {split: np.array([r.label for r in records[split]]) for split in SPLITS}
    names = [b.name for b in args.bundles]
    results = {
        name: _probabilities(bundle, args.artifact, records)
        for name, bundle in zip(names, args.bundles, strict=True)
    }

    rows = []
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            cells = []
            for split in SPLITS:
                mean = np.mean([results[name][split] for name in combo], axis=0)
                right = int((mean.argmax(1) == labels[split]).sum())
                cells.append(f"{right / len(labels[split]):.2%} ({right}/{len(labels[split])})")
            rows.append([" + ".join(combo), *cells])
    table = markdown_table(["models (probabilities averaged)", *SPLITS], rows)

    missed = []
    for split in SPLITS:
        wrong = np.stack([results[n][split].argmax(1) != labels[split] for n in names])
        missed.append(
            f"{split}: {int(wrong.all(0).sum())} of {len(labels[split])} images are wrong in "
            f"every model, {int(wrong.any(0).sum())} in at least one"
        )
    text = "\n\n".join(
        [
            SECTION,
            f"Command: `{command_line()}`",
            table,
            "\n".join(f"- {line}" for line in missed),
        ]
    )
    print(text)
    if args.update_docs:
        update_docs(SECTION, text)


if __name__ == "__main__":
    main()
