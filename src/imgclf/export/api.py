"""``export_bundle``: run one row of the format table on a bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.bundle import ArtifactInfo, Bundle, load_bundle
from imgclf.export.formats import check_options, get_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What an export produced.

    Attributes:
        format: The format name.
        path: The file (or folder) written.
        info: The artifact's manifest entry, when the format writes into the bundle.
        serving_bundle: The serving-only bundle written for ``out``, if asked for.
    """

    format: str
    path: Path
    info: ArtifactInfo | None = None
    serving_bundle: Path | None = None


def export_bundle(bundle: Bundle | str | Path | None, format: str, **options: Any) -> ExportResult:
    """Export a bundle to one format of :data:`imgclf.export.formats.FORMATS`.

    Args:
        bundle: A loaded bundle, its directory, or None for the bundled model.
        format: Format name (``onnx``, ``onnx-int8``, ``tflite``, ...).
        **options: Options the format accepts (see ``imgclf export --help``); ``out`` also writes
            a serving-only bundle with just the new artifact.

    Raises:
        ConfigError: Unknown format or an option the format does not accept.
        BundleError: The bundle is missing, corrupt or lacks what the format exports from.
        ExportError: The export failed or did not pass its checks.
    """
    fmt = get_format(format)
    check_options(fmt, options)
    exporter = fmt.load_exporter()
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    # Formats without a bundle artifact (triton) write to --out themselves.
    out = options.pop("out", None) if fmt.artifact is not None else None
    path = exporter(bundle, **options)
    info = bundle.manifest.artifacts.get(fmt.artifact) if fmt.artifact else None
    serving = None
    if out is not None and fmt.artifact is not None:
        from imgclf.export.artifacts import write_serving_bundle

        serving = write_serving_bundle(bundle, out, [fmt.artifact])
        log.info("wrote serving bundle %s", serving)
    return ExportResult(fmt.name, Path(path), info, serving)
