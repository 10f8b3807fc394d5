"""Downloads of the real models: only the files a step needs, a disk check first, failures explained.

The real profile fetches models with :func:`huggingface_hub.snapshot_download`. Called bare, it fetches a
whole repository: ``meta-llama/Llama-2-7b-hf`` publishes its weights twice (``.bin`` and ``.safetensors``,
~27 GB instead of ~13 GB), and a gated repository fails with an unexplained 401. :func:`download` instead

1. lists the repository's files with their sizes (``HfApi.model_info(files_metadata=True)``),
2. chooses the files with :func:`download_patterns` (config, tokenizer, ONE weights format),
3. checks the free space of the cache folder before anything is written,
4. calls ``snapshot_download(repo, allow_patterns=...)``,

and turns the hub's errors into :class:`HubError` messages that say what to do (licence page and
``HF_TOKEN`` for a gated repo, similar ids for a misspelt one, a mirror or ModelScope for a network error).

Offline (``HF_HUB_OFFLINE=1``, the course's rehearsal on the stand-in hub) the same call resolves the files
from the local cache by the table's file names (:mod:`helpers.catalog`).

CLI::

    python -m helpers.hub download hfl/chinese-alpaca-2-1.3b [--what model|tokenizer|config] [--cache_dir DIR]
    python -m helpers.hub size meta-llama/Llama-2-7b-hf
    python -m helpers.hub modelscope hfl/chinese-alpaca-2-7b
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import shutil
from pathlib import Path

from . import catalog
from .catalog import TOKENIZER_FILES, RealModel
from .core import CourseError, cli_main

WHATS = ("model", "tokenizer", "config")
DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"

# Files per kind of repository (names as the releases publish them; absent ones are simply not matched).
_LLAMA_CONFIG = ("config.json", "generation_config.json")
_LLAMA_TOKENIZER = (*TOKENIZER_FILES, "tokenizer.json", "added_tokens.json")
_LORA_CONFIG = ("adapter_config.json",)
# What sentence-transformers reads to build the embedding model (modules.json names the module folders).
_ST_CONFIG = ("config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "1_Pooling/*", "2_Normalize/*")
_ST_TOKENIZER = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class HubError(CourseError):
    """A download that cannot succeed as asked: the message names the repo, the cause and what to do."""


# --------------------------------------------------------------------------- which files
def _weights(kind: str, listing: list[str]) -> list[str]:
    """The weight files of ONE format among ``listing`` (top-level files): safetensors when there are any,
    else PyTorch ``.bin``, else Meta ``.pth`` (+ their index / params files); ``[]`` when none."""
    top = [f for f in listing if "/" not in f]
    if kind == "lora":
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if name in top:
                return [name]
        return []
    st = [f for f in top if f.endswith(".safetensors") and not f.startswith("adapter_model")]
    # Some repos also ship a consolidated copy beside the HF shards: keep the transformers files when present.
    st = [f for f in st if f.startswith("model")] or st
    if st:
        return sorted(st) + [f for f in ("model.safetensors.index.json",) if f in top]
    bins = sorted(f for f in top if f.startswith("pytorch_model") and f.endswith(".bin"))
    if bins:
        return bins + [f for f in ("pytorch_model.bin.index.json",) if f in top]
    pth = sorted(f for f in top if f.endswith(".pth"))
    return pth + [f for f in ("params.json",) if f in top] if pth else []


def download_patterns(model: RealModel, what: str = "model", files: list[str] | None = None) -> list[str]:
    """The ``allow_patterns`` for ``snapshot_download`` of ``model``: returns a list of file names / globs.

    ``what``: ``config`` (config files), ``tokenizer`` (tokenizer files) or ``model`` (both + the weights in
    one format: safetensors when the repo has them, else ``.bin``, with their index json). ``files`` is the
    repo's listing (online); without it the table's names (``model.weights`` + ``model.extra_files``) decide,
    and every candidate name is returned. With ``files``, only patterns that match a listed file are kept.
    A LoRA gets ``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin`` + tokenizer files; the
    embedding model the files sentence-transformers reads.
    """
    if what not in WHATS:
        raise HubError(f"what={what!r} (--what): choose one of {', '.join(WHATS)}")
    if model.kind == "embedding":
        config, tokenizer = _ST_CONFIG, _ST_TOKENIZER
    elif model.kind == "lora":
        config, tokenizer = _LORA_CONFIG, _LLAMA_TOKENIZER
    else:
        config, tokenizer = _LLAMA_CONFIG, _LLAMA_TOKENIZER
    listing = list(files) if files is not None else [*model.weights, *model.extra_files]
    patterns = {"config": list(config), "tokenizer": list(tokenizer)}.get(what)
    if patterns is None:
        patterns = [*config, *tokenizer, *_weights(model.kind, listing)]
    patterns = list(dict.fromkeys(patterns))
    if files is not None:
        patterns = [p for p in patterns if _select(files, [p])]
    return patterns


def _select(files, patterns: list[str] | None) -> list[str]:
    """The names among ``files`` that ``snapshot_download`` would fetch for ``patterns`` (its own matcher)."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(files), allow_patterns=patterns))


def _guess_model(repo: str, files: list[str]) -> RealModel:
    """A table-like entry for a repo the catalog does not know, its kind guessed from its listing."""
    kind = "lora" if "adapter_config.json" in files else "embedding" if "modules.json" in files else "base"
    return RealModel(repo, kind, None, {}, ())


def _resolve(repo_or_role: str) -> tuple[str, RealModel | None]:
    """``(repo id, table entry or None)`` for a role, a table repo or any well-formed ``org/name``."""
    key = catalog.ROLES.get(repo_or_role, repo_or_role)
    if key in catalog.MODELS:
        return key, catalog.MODELS[key]
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(key)
        if "/" not in key:
            raise HFValidationError("no organisation")
    except HFValidationError as e:
        raise HubError(f"{repo_or_role!r} (REPO) is neither a role of the course ({', '.join(catalog.ROLES)}) "
                       f"nor a repo id of the form org/name ({e}); e.g. hfl/chinese-alpaca-2-1.3b") from None
    return key, None


# --------------------------------------------------------------------------- where, how
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """Whether hub access is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), read now.

    Read at call time, not at import: huggingface_hub freezes its copy when it is first imported."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    """The hub URL downloads go to: ``HF_ENDPOINT`` as set now (a mirror such as hf-mirror.com), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_folder(cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """``(folder, where it comes from)`` of the Hugging Face hub cache: ``cache_dir``, else ``HF_HUB_CACHE``,
    else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``.

    Resolved by hand, at call time, because huggingface_hub reads these variables once at import."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve(), "cache_dir / --cache_dir"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser().resolve(), var
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser().resolve() / "hub", "HF_HOME/hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser().resolve() / "huggingface" / "hub", "the default (HF_HOME and HF_HUB_CACHE unset)"


def _storage(folder: Path, repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return folder / repo_folder_name(repo_id=repo, repo_type="model")


def _human(n: int | float) -> str:
    """Bytes as text: GB (10^9) for model-sized numbers, exact bytes for small ones."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (its first existing parent: nothing is created)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def modelscope_command(repo: str, what: str = "model", local_dir: str | None = None) -> str:
    """The ``modelscope download --model ... --include ... --local_dir ...`` shell line that fetches the same
    files from the model's ModelScope copy (``pip install modelscope`` first); returns the line.

    ``local_dir`` defaults to ``models/<short name>``; pass that folder to the course's loaders."""
    _, model = _resolve(repo)
    if model is None or not model.modelscope:
        raise HubError(f"{repo!r}: the course's table (helpers.catalog, field modelscope) names no ModelScope copy of "
                       "this repo; search https://modelscope.cn/models, or keep the Hugging Face hub through a "
                       f"mirror: export HF_ENDPOINT={MIRROR_ENDPOINT}")
    include = " ".join(shlex.quote(p) for p in download_patterns(model, what))
    target = shlex.quote(str(local_dir or f"models/{model.short_name}"))
    return f"modelscope download --model {model.modelscope} --include {include} --local_dir {target}"


# --------------------------------------------------------------------------- errors
def _similar(repo: str) -> list[str]:
    """Table repo ids close to ``repo`` (case slips, typos in the org or the name)."""
    names = list(catalog.MODELS)
    lower = {n.lower(): n for n in names}
    short = {n.rsplit("/", 1)[-1].lower(): n for n in names}
    hits = [lower[m] for m in difflib.get_close_matches(repo.lower(), list(lower), n=3, cutoff=0.6)]
    hits += [short[m] for m in difflib.get_close_matches(repo.rsplit("/", 1)[-1].lower(), list(short), n=3, cutoff=0.6)]
    return list(dict.fromkeys(hits))


def _explain(err: Exception, repo: str, model: RealModel | None, token) -> HubError | None:
    """The :class:`HubError` for an exception raised by huggingface_hub / httpx, or None if it is not a hub one."""
    import httpx
    from huggingface_hub import get_token
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    ep = endpoint()
    status = getattr(getattr(err, "response", None), "status_code", None)
    alt = ""
    if model is not None and model.modelscope:
        alt = f" Or download the same files from ModelScope: {modelscope_command(repo)}"
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"{repo}: huggingface_hub was imported while HF_HUB_OFFLINE=1 (the tiny profile and CI set it) "
                        "and keeps that switch for the life of the process: restart the Python process / notebook "
                        "kernel with HF_HUB_OFFLINE unset (PROFILE='real'), then download again.")
    plain_http = isinstance(err, HfHubHTTPError) and not isinstance(err, RepositoryNotFoundError)
    if plain_http and status == 401:
        return HubError(f"{repo}: the hub at {ep} refused your token (HTTP 401: invalid or expired). Create a new read "
                        f"token at {TOKENS_PAGE} and run `hf auth login` or `export HF_TOKEN=hf_...`; public "
                        "repositories need no token (unset HF_TOKEN).")
    if isinstance(err, GatedRepoError) or (plain_http and status == 403):
        # licences are accepted on huggingface.co itself, also when downloads go through a mirror
        page = model.licence if model is not None and model.gated else f"{DEFAULT_ENDPOINT}/{repo}"
        has_token = bool(token) if token is not None else bool(get_token())
        if status == 403:
            why = ("your token was accepted but this account has no access yet: accept the licence with the same "
                   "account (approval can take a while)")
        elif has_token:
            why = ("your token was refused (invalid or expired?) or its account has no access: check the token and "
                   "that its account accepted the licence")
        else:
            why = "no Hugging Face token was found (HF_TOKEN is unset and you are not logged in)"
        return HubError(f"{repo} is a gated repository and {why}. Accept the licence on its page: {page}; then "
                        f"create a read token at {TOKENS_PAGE} and run `hf auth login` or `export HF_TOKEN=hf_...` "
                        f"(in a notebook: os.environ['HF_TOKEN'] = ...).{alt}")
    if isinstance(err, RepositoryNotFoundError):
        similar = _similar(repo)
        hint = (f"similar ids in the course's table: {', '.join(similar)}" if similar
                else f"the course's table has: {', '.join(catalog.MODELS)}")
        return HubError(f"repository {repo!r} was not found on {ep}: check the spelling (org/name, case-sensitive); "
                        f"{hint}. A private repository answers the same: log in with HF_TOKEN if it is yours.")
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"{repo}: revision not found on {ep} (revision= / --revision): use a branch, tag or commit "
                        "that exists on the repo page, or leave it unset for main.")
    network = (httpx.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError)
    if isinstance(err, network) or (isinstance(err, HfHubHTTPError) and (status or 0) in (429, 500, 502, 503, 504)):
        return HubError(f"{repo}: could not reach {ep} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
                        f"In mainland China use the mirror: export HF_ENDPOINT={MIRROR_ENDPOINT} (or os.environ in the "
                        f"notebook) and run again.{alt} If the files are already in the cache, set HF_HUB_OFFLINE=1.")
    if isinstance(err, HfHubHTTPError):
        return HubError(f"{repo}: the hub at {ep} answered HTTP {status}: {str(err).splitlines()[0][:200]}")
    return None


def _raise_explained(err: Exception, repo: str, model: RealModel | None, token) -> None:
    explained = _explain(err, repo, model, token)
    if explained is not None:
        raise explained from err
    raise err


# --------------------------------------------------------------------------- online / offline
def _listing(repo: str, revision: str | None, token) -> tuple[str, dict[str, int], object]:
    """``(commit sha, {file: size in bytes}, gated flag)`` of ``repo`` from the hub (nothing is written)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint(), token=token).model_info(repo, revision=revision, files_metadata=True)
    sizes = {s.rfilename: int((s.lfs.size if s.lfs else s.size) or 0) for s in info.siblings or []}
    return info.sha, sizes, info.gated


def _plan_online(repo: str, model: RealModel | None, what: str, revision, token):
    """``(model, patterns, {selected file: size}, sha)`` from the hub's listing; gated access checked first."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    try:
        sha, sizes, gated = _listing(repo, revision, token)
        if gated or (model is not None and model.gated):
            # Ask before writing anything whether this token may read the files (GatedRepoError if not).
            try:
                HfApi(endpoint=endpoint(), token=token).auth_check(repo)
            except HfHubHTTPError as e:
                if isinstance(e, GatedRepoError) or e.response.status_code in (401, 403):
                    raise
                # a mirror without the auth-check route: the download itself will say if access is missing
    except Exception as e:  # noqa: BLE001 - every hub/network failure gets its explanation
        _raise_explained(e, repo, model, token)
    used = model or _guess_model(repo, list(sizes))
    patterns = download_patterns(used, what, files=list(sizes))
    selected = {f: sizes[f] for f in _select(sizes, patterns)}
    if not selected:
        raise HubError(f"{repo}: the repository has no {what} files the course recognises "
                       f"(it lists: {', '.join(sorted(sizes)[:20]) or 'nothing'}); choose another --what or repo")
    return used, patterns, selected, sha


def _snapshot_offline(repo: str, model: RealModel | None, what: str, folder: Path, where: str, revision):
    """``(snapshot folder, patterns)`` resolved from the local cache only."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    patterns = download_patterns(model, what) if model is not None else None
    try:
        path = Path(snapshot_download(repo, revision=revision, cache_dir=str(folder), allow_patterns=patterns,
                                      local_files_only=True))
    except IncompleteSnapshotError as e:
        raise HubError(f"{repo}: the cached snapshot in {_storage(folder, repo)} is incomplete for what={what!r} "
                       f"({str(e).split(': ', 1)[-1][:300]}); HF_HUB_OFFLINE=1 forbids fetching the rest: unset "
                       "HF_HUB_OFFLINE and download once online.") from e
    except LocalEntryNotFoundError as e:
        raise HubError(f"{repo} (revision {revision or 'main'}) is not in the local cache {_storage(folder, repo)} "
                       f"(cache folder from {where}) and HF_HUB_OFFLINE=1 forbids downloading it. In this course's "
                       "rehearsal, build the stand-in hub first: python -m helpers.standin build; otherwise unset "
                       "HF_HUB_OFFLINE and download once online.") from e
    if model is not None:
        _check_complete(path, model, what, repo)
    return path, patterns


def _files_in(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def _check_complete(path: Path, model: RealModel, what: str, repo: str) -> None:
    """Raise :class:`HubError` when the cached snapshot lacks the config, tokenizer or weights ``what`` needs."""
    files = _files_in(path)
    needs = []
    cfg = "adapter_config.json" if model.kind == "lora" else "config.json"
    if what in ("model", "config") and cfg not in files:
        needs.append(cfg)
    has_tok = any(f in files for f in ("tokenizer.model", "tokenizer.json", "vocab.txt"))
    if what == "tokenizer" and not has_tok:
        needs.append("tokenizer.model / tokenizer.json / vocab.txt")
    if what == "model" and not _weights(model.kind, files):
        needs.append(f"weights ({', '.join(model.weights)})")
    if needs:
        raise HubError(f"{repo}: the cached snapshot {path} lacks {'; '.join(needs)} (HF_HUB_OFFLINE=1, so nothing "
                       "can be fetched): rebuild the stand-in hub (python -m helpers.standin build) or unset "
                       "HF_HUB_OFFLINE and download again.")


# --------------------------------------------------------------------------- public
def download(repo_or_role: str, what: str = "model", *, cache_dir: str | Path | None = None, token=None,
             revision: str | None = None) -> Path:
    """Download (or, offline, find in the cache) the files ``what`` needs of a repo or role; returns the
    snapshot folder (``<cache>/models--org--name/snapshots/<sha>``) to pass to the loaders.

    Online: list the repo with sizes, choose :func:`download_patterns`, check the free disk space of the cache
    folder before writing anything, then ``snapshot_download(allow_patterns=...)``. Offline
    (``HF_HUB_OFFLINE=1``): the table's names, resolved from the local cache. A repo id the table does not
    know still works (patterns from its listing online; offline the whole cached snapshot).
    Raises :class:`HubError` with what to do (gated repo, unknown repo, disk, network, not cached).
    """
    if what not in WHATS:
        raise HubError(f"what={what!r} (--what): choose one of {', '.join(WHATS)}")
    repo, model = _resolve(repo_or_role)
    folder, where = cache_folder(cache_dir)
    if offline():
        return _snapshot_offline(repo, model, what, folder, where, revision)[0]
    from huggingface_hub import snapshot_download

    _, patterns, selected, sha = _plan_online(repo, model, what, revision, token)
    snapshot = _storage(folder, repo) / "snapshots" / sha
    need = sum(size for f, size in selected.items() if not (snapshot / f).is_file())
    free = _free_bytes(folder)
    if need > free:
        raise HubError(f"{repo}: not enough disk space: the download needs {_human(need)} ({len(selected)} files) but "
                       f"only {_human(free)} are free in {folder} (the Hugging Face cache, from {where}). Free some "
                       "space, or put the cache on a bigger disk: export HF_HUB_CACHE=/big/disk/hf-cache (or HF_HOME), "
                       "or pass cache_dir= / --cache_dir.")
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=str(folder), allow_patterns=patterns,
                                 token=token, endpoint=endpoint())
    except Exception as e:  # noqa: BLE001 - every hub/network failure gets its explanation
        _raise_explained(e, repo, model, token)
    return Path(path)


def download_size(repo_or_role: str, what: str = "model", *, cache_dir: str | Path | None = None, token=None,
                  revision: str | None = None) -> int:
    """Bytes of the files :func:`download` would fetch for ``what``: online from the hub's listing, offline the
    sizes of those files in the local cache. Returns an int (bytes; divide by 2**30 for GiB)."""
    if what not in WHATS:
        raise HubError(f"what={what!r} (--what): choose one of {', '.join(WHATS)}")
    repo, model = _resolve(repo_or_role)
    if offline():
        folder, where = cache_folder(cache_dir)
        path, patterns = _snapshot_offline(repo, model, what, folder, where, revision)
        return sum((path / f).stat().st_size for f in _select(_files_in(path), patterns))
    return sum(_plan_online(repo, model, what, revision, token)[2].values())


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.hub download|size|modelscope``."""
    ap = argparse.ArgumentParser(prog="python -m helpers.hub", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (("download", "download (or find in the cache) and print the snapshot folder"),
                       ("size", "print how many bytes a download fetches"),
                       ("modelscope", "print the ModelScope command for the same files")):
        p = sub.add_parser(name, help=text)
        p.add_argument("repo", metavar="REPO", help="repo id (org/name) or a course role (alpaca, llama_base, ...)")
        p.add_argument("--what", default="model", choices=WHATS)
        if name == "modelscope":
            p.add_argument("--local_dir", default=None, help="target folder (default: models/<name>)")
        else:
            p.add_argument("--cache_dir", default=None, help="hub cache folder (default: HF_HUB_CACHE / HF_HOME/hub)")
            p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    return ap


def _run(args) -> int:
    """The CLI: print the snapshot folder, the download size or the ModelScope command."""
    if args.cmd == "download":
        print(download(args.repo, args.what, cache_dir=args.cache_dir, revision=args.revision))
    elif args.cmd == "size":
        n = download_size(args.repo, args.what, cache_dir=args.cache_dir, revision=args.revision)
        print(f"{n} bytes ({_human(n)})")
    else:
        print(modelscope_command(args.repo, args.what, args.local_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.hub download|size|modelscope REPO``; returns the exit code (2 for bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
