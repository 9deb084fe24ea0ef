"""A Triton-style model repository on disk, loaded and kept in sync while the server runs.

Every sub-directory with a ``config.pbtxt`` is a model; its numeric sub-directories holding the
model file are versions. ``config.pbtxt`` is parsed with Triton's own ``ModelConfig`` message, so
a repository that loads here loads in Triton, and the version policy follows Triton's rules:
``latest { num_versions: n }`` (the default, n = 1), ``all {}`` or ``specific { versions: [...] }``.

:meth:`ModelRepository.poll` compares the directory with what is loaded: new versions are loaded
before old ones are unloaded (requests never see a gap), removed ones are drained and unloaded,
changed files are reloaded. A background thread polls every ``poll_interval_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import BundleError, ModelNotFoundError, ModelNotReadyError
from imgclf.export.triton import CONFIG_NAME, MODEL_FILENAME
from imgclf.serving.model_server.model import ServedModel

logger = logging.getLogger(__name__)

#: Identity of a loaded version: (model, version) -> file stamps; a change triggers a reload.
Stamp = tuple[tuple[str, int, int], ...]


def parse_model_config(model_dir: Path) -> Any:
    """Parse ``<model_dir>/config.pbtxt`` into Triton's ``ModelConfig`` message.

    Raises:
        BundleError: The file is missing or not a valid ModelConfig.
    """
    from google.protobuf import text_format  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2

    path = model_dir / CONFIG_NAME
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise BundleError(f"{path}: not a valid Triton model config ({exc})") from exc
    if config.name and config.name != model_dir.name:
        raise BundleError(
            f"{path}: name {config.name!r} differs from its directory {model_dir.name!r}; "
            "Triton requires them to match"
        )
    if config.platform not in ("", "onnxruntime_onnx") or config.backend not in ("", "onnxruntime"):
        raise BundleError(f"{path}: only onnxruntime_onnx models can be served by imgclf")
    config.name = model_dir.name
    return config


def select_versions(model_dir: Path, config: Any) -> list[int]:
    """Versions the config's version policy selects among those present on disk, ascending."""
    filename = config.default_model_filename or MODEL_FILENAME
    present = sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit() and int(child.name) > 0 and (child / filename).is_file()
    )
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return present
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in present if v in wanted]
    count = policy.latest.num_versions if kind == "latest" else 1
    return present[-max(1, count) :]


@dataclass
class _Entry:
    model: ServedModel
    stamp: Stamp


@dataclass
class ModelRepository:
    """Loaded models of a repository directory. Thread-safe.

    Args:
        root: Repository directory.
        threads: ONNX Runtime intra-op threads per model (None: ONNX Runtime's default).
    """

    root: Path
    threads: int | None = None
    _loaded: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _poller: threading.Thread | None = None
    _polled: bool = False

    def poll(self) -> None:
        """Bring the loaded models in line with the directory (load, reload, unload)."""
        if not self.root.is_dir():
            logger.error("model repository %s does not exist", self.root)
            return
        wanted, errors = self._scan()
        with self._lock:
            current = {key: entry.stamp for key, entry in self._loaded.items()}
        for key, (model_dir, config, stamp) in wanted.items():
            if current.get(key) != stamp:
                self._load(key, model_dir, config, stamp, errors)
        removed = [key for key in current if key not in wanted]
        for key in removed:
            with self._lock:
                entry = self._loaded.pop(key)
            logger.info("unloading %s version %d", *key)
            entry.model.close()
        with self._lock:
            self._errors = errors
            self._polled = True

    def _scan(self) -> tuple[dict[tuple[str, int], tuple[Path, Any, Stamp]], dict[str, str]]:
        wanted: dict[tuple[str, int], tuple[Path, Any, Stamp]] = {}
        errors: dict[str, str] = {}
        for model_dir in sorted(p for p in self.root.iterdir() if (p / CONFIG_NAME).is_file()):
            try:
                config = parse_model_config(model_dir)
                for version in select_versions(model_dir, config):
                    stamp = _stamp(model_dir, version, config)
                    wanted[(model_dir.name, version)] = (model_dir, config, stamp)
            except (BundleError, OSError) as exc:
                errors[model_dir.name] = str(exc)
                logger.error("model %s: %s", model_dir.name, exc)
                # Keep serving what is loaded rather than dropping a model over a bad edit.
                with self._lock:
                    for key, entry in self._loaded.items():
                        if key[0] == model_dir.name:
                            wanted[key] = (model_dir, entry.model.config, entry.stamp)
        return wanted, errors

    def _load(
        self,
        key: tuple[str, int],
        model_dir: Path,
        config: Any,
        stamp: Stamp,
        errors: dict[str, str],
    ) -> None:
        try:
            model = ServedModel.load(model_dir, key[1], config, threads=self.threads)
        except BundleError as exc:
            errors[key[0]] = str(exc)
            logger.error("model %s version %d: %s", key[0], key[1], exc)
            return
        with self._lock:
            old = self._loaded.get(key)
            self._loaded[key] = _Entry(model, stamp)
        logger.info("loaded %s version %d", *key)
        if old is not None:
            old.model.close()

    def get(self, name: str, version: str = "") -> ServedModel:
        """The requested version of a model, or its latest loaded version when ``version`` is "".

        Raises:
            ModelNotFoundError: No such model or version.
            ModelNotReadyError: The model exists on disk but failed to load.
        """
        with self._lock:
            versions = {v: e.model for (n, v), e in self._loaded.items() if n == name}
            error = self._errors.get(name)
        if not versions:
            if error is not None:
                raise ModelNotReadyError(f"model {name!r} is not loaded: {error}")
            raise ModelNotFoundError(
                f"unknown model {name!r}; this server serves {self.model_names()}"
            )
        if not version:
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; available: {sorted(versions)}"
            )
        return versions[int(version)]

    def versions(self, name: str) -> list[int]:
        """Loaded versions of a model, ascending."""
        with self._lock:
            return sorted(v for (n, v) in self._loaded if n == name)

    def model_names(self) -> list[str]:
        """Names of models with at least one loaded version."""
        with self._lock:
            return sorted({n for n, _ in self._loaded})

    def is_ready(self) -> bool:
        """True once the repository was read and every model in it has a loaded version."""
        with self._lock:
            return (
                self._polled
                and bool(self._loaded)
                and not (set(self._errors) - {n for n, _ in self._loaded})
            )

    def start_polling(self, interval_s: float) -> None:
        """Poll now, then every ``interval_s`` seconds in a daemon thread (0: never again)."""
        self.poll()
        if interval_s <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(
            target=self._poll_loop, args=(interval_s,), name="repository-poll", daemon=True
        )
        self._poller.start()

    def _poll_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll()
            except Exception:  # a poll must never kill the thread that keeps models fresh
                logger.exception("polling the model repository failed")

    def close(self) -> None:
        """Stop polling and unload every model (pending requests finish first)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            entries = list(self._loaded.values())
            self._loaded.clear()
        for entry in entries:
            entry.model.close()


def _stamp(model_dir: Path, version: int, config: Any) -> Stamp:
    files = [
        model_dir / CONFIG_NAME,
        model_dir / str(version) / (config.default_model_filename or MODEL_FILENAME),
        *(model_dir / name for name in ("labels.txt", "imgclf.json")),
    ]
    return tuple(
        (path.name, stat.st_mtime_ns, stat.st_size)
        for path in files
        if path.is_file() and (stat := path.stat())
    )
