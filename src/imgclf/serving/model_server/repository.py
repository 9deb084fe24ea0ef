"""A Triton-style model repository on disk, loaded and kept in sync while the server runs.

Every sub-directory with a ``config.pbtxt`` is a model; its numeric sub-directories holding the
model file are versions. ``config.pbtxt`` is parsed with Triton's own ``ModelConfig`` message, so
a repository that loads here loads in Triton, and the version policy follows Triton's rules:
``latest { num_versions: n }`` (the default, n = 1), ``all {}`` or ``specific { versions: [...] }``.

:meth:`ModelRepository.poll` compares the directory with what is loaded: new versions are loaded
before old ones are unloaded (requests never see a gap), removed ones are drained and unloaded,
changed files are reloaded. A background thread polls every ``poll_interval_s`` seconds.

A version that cannot be loaded (a half-copied or corrupt model file, a missing file, a model
that does not match its config) never takes a model offline: until every version the policy
selects has loaded, the model keeps serving the versions it served before, the failure is logged
as a warning with its reason and reported by :meth:`ModelRepository.index` (and so by the
version-ready endpoints), and the version is tried again as soon as its files change (a copy
that completes) or :data:`RETRY_FAILED_S` seconds later.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import BundleError, ModelNotFoundError, ModelNotReadyError
from imgclf.model_repository import CONFIG_NAME, MODEL_FILENAME
from imgclf.serving.model_server.model import ServedModel

logger = logging.getLogger(__name__)

#: Identity of a loaded version: (model, version) -> file stamps; a change triggers a reload.
Stamp = tuple[tuple[str, int, int], ...]
#: A version that failed to load is tried again when its files change, or after this many seconds.
RETRY_FAILED_S = 60.0


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
    """Versions the config's version policy selects among those present on disk, ascending.

    Every numeric sub-directory is a version, with or without its model file (as in Triton): a
    version directory whose file is still missing is selected, fails to load, and is reported.
    """
    present = sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit() and int(child.name) > 0 and child.is_dir()
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


@dataclass(frozen=True)
class _Failure:
    stamp: Stamp
    reason: str
    at: float


@dataclass(frozen=True)
class VersionState:
    """One row of the repository index: a model version and whether it serves.

    Attributes:
        name: Model name.
        version: Version number.
        state: ``READY`` (loaded and serving) or ``UNAVAILABLE`` (failed to load).
        reason: Why an ``UNAVAILABLE`` version is not loaded ("" when ready).
    """

    name: str
    version: int
    state: str
    reason: str = ""


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
    _failed: dict[tuple[str, int], _Failure] = field(default_factory=dict)
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
            if current.get(key) != stamp and self._should_try(key, stamp, errors):
                self._load(key, model_dir, config, stamp, errors)
        with self._lock:
            self._failed = {k: f for k, f in self._failed.items() if k in wanted}
            failing = {name for name, _ in self._failed}
            current = {key: entry.stamp for key, entry in self._loaded.items()}
        # A model whose selected versions did not all load keeps serving what it served.
        removed = [key for key in current if key not in wanted and key[0] not in failing]
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

    def _should_try(self, key: tuple[str, int], stamp: Stamp, errors: dict[str, str]) -> bool:
        """False while a failed version's files are unchanged and its retry time is not due."""
        with self._lock:
            failure = self._failed.get(key)
        if failure is None or failure.stamp != stamp:
            return True
        if time.monotonic() - failure.at >= RETRY_FAILED_S:
            return True
        errors.setdefault(key[0], failure.reason)
        return False

    def _load(
        self,
        key: tuple[str, int],
        model_dir: Path,
        config: Any,
        stamp: Stamp,
        errors: dict[str, str],
    ) -> None:
        name, version = key
        try:
            model = ServedModel.load(model_dir, version, config, threads=self.threads)
        except Exception as exc:  # whatever the files hold, a bad version must not stop the poll
            reason = str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
            errors[name] = reason
            with self._lock:
                self._failed[key] = _Failure(stamp, reason, time.monotonic())
                serving = sorted(v for (n, v) in self._loaded if n == name)
            fallback = f"still serving versions {serving}" if serving else "nothing to serve"
            logger.warning(
                "model %s version %d failed to load (%s); %s; retrying when its files change",
                name, version, reason, fallback,
            )  # fmt: skip
            return
        with self._lock:
            old = self._loaded.get(key)
            self._loaded[key] = _Entry(model, stamp)
            self._failed.pop(key, None)
        logger.info("loaded %s version %d", *key)
        if old is not None:
            old.model.close()

    def get(self, name: str, version: str = "") -> ServedModel:
        """The requested version of a model, or its latest loaded version when ``version`` is "".

        Raises:
            ModelNotFoundError: No such model or version.
            ModelNotReadyError: The model or the version exists on disk but failed to load.
        """
        with self._lock:
            versions = {v: e.model for (n, v), e in self._loaded.items() if n == name}
            error = self._errors.get(name)
            failed = self._failed.get((name, int(version))) if version.isdigit() else None
        if not versions:
            if error is not None:
                raise ModelNotReadyError(f"model {name!r} is not loaded: {error}")
            raise ModelNotFoundError(
                f"unknown model {name!r}; this server serves {self.model_names()}"
            )
        if not version:
            return versions[max(versions)]
        if failed is not None and int(version) not in versions:
            raise ModelNotReadyError(
                f"model {name!r} version {version} failed to load: {failed.reason}; "
                f"serving {sorted(versions)}"
            )
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; available: {sorted(versions)}"
            )
        return versions[int(version)]

    def versions(self, name: str) -> list[int]:
        """Loaded versions of a model, ascending."""
        with self._lock:
            return sorted(v for (n, v) in self._loaded if n == name)

    def index(self) -> list[VersionState]:
        """Every version the repository serves or failed to load, by name and version."""
        with self._lock:
            rows = [VersionState(n, v, "READY") for n, v in self._loaded]
            rows += [
                VersionState(n, v, "UNAVAILABLE", failure.reason)
                for (n, v), failure in self._failed.items()
                if (n, v) not in self._loaded
            ]
        return sorted(rows, key=lambda row: (row.name, row.version))

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
