"""Where weights come from: a published name, a checkpoint folder, or a Hub repo; told apart here only.

A **source** is one of

- a published name (``"lenet_fa.fashion_mnist"``; ``"lenet_fa"`` means its default tag): the registry's record
  names the file and its sha256; the file is this clone's ``model_cards/`` mirror, else the Hub (cached);
- a checkpoint folder, a training run's folder or a ``.safetensors`` file (a ``Path``, a text with a path
  separator, or an existing path): the ``config.json`` beside the weights records their sha256;
- a Hub repo, ``"hf-hub:<org>/<repo>"``: downloaded into the HF cache, then read as a folder.

A string that is a registered name always means the published weights, even where a folder of that name
exists here (write ``./name`` for the folder). :func:`resolve` is the one place that knows these rules;
:func:`fetch` gives the weights file, the checked ``config.json`` and the published record of a source, each
read once. Loading the file into a model, strictly and sha256-checked, is :func:`biotorch.hub.load_checkpoint`.

Example::

    >>> source = resolve("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> source.kind, source.repo_id
    ('hub', 'biotorch/lenet_fa.fashion_mnist')
    >>> found = fetch(resolve("lenet_fa.fashion_mnist"))
    >>> found.file.name, found.sha256[:12], found.record.tag
    ('model.safetensors', '…', 'fashion_mnist')
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Union

from . import hub, registry
from .errors import ConfigError
from .hub import (CONFIG_NAME, WEIGHTS_NAME, PathLike, config_beside, find_weights, read_config,
                  recorded_sha256)
from .registry import CheckpointRecord, check_repo_id, get_pretrained_cfg
from .version import __version__

HUB_PREFIX = "hf-hub:"


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved source of weights: ``kind`` is ``"name"``, ``"folder"`` or ``"hub"``; ``text`` as given."""

    kind: str
    text: str
    name: Optional[str] = None      # kind "name": the registered name (with its tag)
    path: Optional[Path] = None     # kind "folder": the folder or file
    repo_id: Optional[str] = None   # kind "hub": <org>/<repo>

    def label(self, keep_dots: bool = True) -> str:
        """A short, path-safe label of the source (its last path component): names a fine-tuned run's folder
        (``keep_dots``) and, without dots, the tag of a run started from a folder that has no published tag."""
        allowed = "A-Za-z0-9_.-" if keep_dots else "A-Za-z0-9_-"
        return re.sub(f"[^{allowed}]+", "_", Path(self.text.removeprefix(HUB_PREFIX)).name)

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What a source holds: the weights ``file``, the sha256 its record expects (``None``: nothing recorded),
    the checked ``config`` beside it (``{}`` for a bare file or a published name) and the published ``record``
    (names, and folders whose ``config.json`` holds one)."""

    source: Source
    file: Path
    sha256: Optional[str]
    config: dict
    record: Optional[CheckpointRecord]

    @property
    def record_dict(self) -> dict:
        """The published record as a dict (``{}`` for a run's folder, which has none)."""
        if self.record is not None and self.source.kind == "name":
            return dataclasses.asdict(self.record)
        return self.config.get("pretrained_cfg") or {}


def is_registered(text: str) -> bool:
    try:
        get_pretrained_cfg(text)
    except (TypeError, ValueError):
        return False
    return True


def kind(source: Union[Source, PathLike]) -> str:
    """``"hub"``, ``"name"`` or ``"folder"``: how :func:`resolve` reads ``source``, without raising (an unknown
    name is a ``"name"``; :func:`resolve` then fails with its close matches)."""
    if isinstance(source, Source):
        return source.kind
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return "hub"
    if isinstance(source, str) and is_registered(text):
        return "name"
    if not isinstance(source, str) or os.sep in text or Path(text).exists():
        return "folder"
    return "name"


def resolve(source: Union[Source, PathLike]) -> Source:
    """The source ``source`` names (see the module's rules); an unknown name fails with its close matches, a
    missing folder with its path, a malformed Hub id with the form it takes."""
    if isinstance(source, Source):
        return source
    text, how = str(source), kind(source)
    if not text.strip():
        raise ConfigError("a source of weights is a registered name, hf-hub:<org>/<repo> or a folder, got ''")
    if how == "hub":
        repo_id = text[len(HUB_PREFIX):]
        try:
            check_repo_id(repo_id, "the repo id")
        except ValueError as error:
            raise ConfigError(f"{text!r}: a Hub id is hf-hub:<org>/<repo>; {error}") from None
        return Source("hub", text, repo_id=repo_id)
    if how == "name":
        return Source("name", text, name=get_pretrained_cfg(text).name)
    if not Path(text).exists():
        raise FileNotFoundError(f"no checkpoint folder at {text}")
    return Source("folder", text, path=Path(text))


def folder_source(path: PathLike) -> Source:
    """A folder or file as a source, whatever its name (``create_model(checkpoint=...)``, ``pretrained_cfg``'s
    ``file``)."""
    return Source("folder", str(path), path=Path(path))


def fetch(source: Union[Source, PathLike], revision: Optional[str] = None, local_files_only: bool = False,
          cache_dir: Optional[PathLike] = None, require_model: bool = True, config_required: bool = True) -> Fetched:
    """The weights file of ``source``, the sha256 its record expects, its checked config and published record.

    A folder must hold a ``config.json`` unless ``config_required`` is false (a bare weights file, or a folder
    whose file's metadata names the model: ``create_model(checkpoint=...)``); ``require_model``: that config
    must describe a model (arch, rule, classes...).

    Nothing is hashed here: :func:`biotorch.hub.load_checkpoint` hashes the file once, before reading it. A
    published name reads this clone's mirror (``model_cards/<name>``) unless a ``revision`` is asked for, else
    the Hub; a Hub repo is downloaded (config and weights) into the HF cache.
    """
    source = resolve(source)
    if source.kind == "name":
        record = get_pretrained_cfg(source.name)
        return Fetched(source, _published_file(record, revision, local_files_only, cache_dir),
                       recorded_sha256({"files": record.files}), {}, record)
    folder = source.path if source.kind == "folder" else _download_repo(source.repo_id, revision, local_files_only,
                                                                        cache_dir)
    if folder.is_dir() and config_required:
        config = read_config(folder, require_model)  # a checkpoint folder says what it holds, before its weights
        file = find_weights(folder)
    else:
        file = find_weights(folder)
        config = config_beside(file, require_model=require_model)
    expected = recorded_sha256(config, file.name)  # the config is read once: the sha256 and the model's facts
    record = config.get("pretrained_cfg")
    try:
        record = CheckpointRecord.from_dict(record) if isinstance(record, dict) else None
    except (KeyError, TypeError):  # a few fields (save_pretrained's), not a published record
        record = None
    return Fetched(source, file, expected, config, record)


def _published_file(record: CheckpointRecord, revision: Optional[str], local_files_only: bool,
                    cache_dir: Optional[PathLike]) -> Path:
    mirror = hub.MIRROR / record.name / WEIGHTS_NAME  # looked up at each call: a test may point it elsewhere
    if mirror.is_file() and revision is None:
        return mirror
    return _hub_files(record.hub_id, (WEIGHTS_NAME,), revision, local_files_only, cache_dir)[0]


def _download_repo(repo_id: str, revision: Optional[str], local_files_only: bool,
                   cache_dir: Optional[PathLike]) -> Path:
    """The folder of a Hub checkpoint repo (config and weights) in the local HF cache, downloaded if needed; where
    the Hub cannot be reached and the cache has none, this clone's copy of a repo biotorch publishes."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return _hub_files(repo_id, (CONFIG_NAME, WEIGHTS_NAME), revision, local_files_only, cache_dir)[0].parent
    except LocalEntryNotFoundError:
        mirror = _mirror_of(repo_id)
        if mirror is None or revision is not None:
            raise
        warnings.warn(f"the Hub could not be reached and {repo_id} is not in the HF cache: loaded this clone's copy, "
                      f"{mirror} (the weights biotorch {__version__} publishes)", stacklevel=3)
        return mirror


def _hub_files(repo_id: str, filenames: tuple[str, ...], revision: Optional[str], local_files_only: bool,
               cache_dir: Optional[PathLike]) -> list[Path]:
    """``filenames`` of a Hub repo from the HF cache, downloaded into it if needed. Where the Hub does not answer
    one request (or HF_HUB_OFFLINE=1) only the cache is read, so a file not there fails at once, in one line naming
    the cache looked in: huggingface_hub alone retries for ~20 s first."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    cached = all(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision), str)
                 for name in filenames)
    offline = local_files_only or constants.HF_HUB_OFFLINE or (not cached and not _hub_answers(repo_id, revision))
    try:
        return [Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=offline, cache_dir=cache_dir))
                for name in filenames]
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "local_files_only=True" if local_files_only
               else f"the Hub ({constants.ENDPOINT}) could not be reached")
        raise LocalEntryNotFoundError(f"{HUB_PREFIX}{repo_id}{f'@{revision}' if revision else ''} is not in the local "
                                      f"HF cache ({cache_dir or constants.HF_HUB_CACHE}) and {why}") from None


def _hub_answers(repo_id: str, revision: Optional[str]) -> bool:
    """Whether the Hub answers one request about ``repo_id`` (any HTTP answer, an error included), without retries."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_NAME, revision=revision))
    except HfHubHTTPError:  # not found, gated, ...: it answered; hf_hub_download says what the answer means
        return True
    except Exception:  # no answer: refused, no DNS, a timeout
        return False
    return True


def _mirror_of(repo_id: str) -> Optional[Path]:
    """This clone's copy of a repo the registry publishes (``model_cards/<name>``), if it has one."""
    for record in registry._pretrained().values():
        if record.hub_id == repo_id and (hub.MIRROR / record.name / CONFIG_NAME).is_file():
            return hub.MIRROR / record.name
    return None
