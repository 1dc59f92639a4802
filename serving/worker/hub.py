"""Download what serving needs from a Hugging Face Hub repository (the worker side of a model
source ``hf://org/name@revision``).

    python -m serving.worker.hub REPO REVISION DEST [--token-env NAME]

Runs in the quantizer environment (huggingface_hub 1.33). The endpoint is ``HF_ENDPOINT``
(default https://huggingface.co): huggingface_hub 1.33 reads it once, at import, into
``huggingface_hub.constants.ENDPOINT``, which ``HfApi()``, ``hf_hub_url`` and ``hf_hub_download``
use when no ``endpoint`` is passed; ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are
read the same way, so the caller sets them in the worker's environment.

1. ``model_info`` resolves the revision to a commit; every later request names that commit, so
   a branch that moves midway cannot mix two commits.
2. The files are the top-level ones matching ``SERVING_FILES``; where a
   ``*.safetensors.index.json`` is among them, only the shards its ``weight_map`` names (a repo
   that also ships Mistral's ``consolidated.safetensors`` is not downloaded twice).
3. Into DEST with ``hf_hub_download(local_dir=DEST)``, which skips a file DEST already holds at
   that commit (its record is under DEST/.cache/huggingface). It does not resume a partial
   file: 1.33 downloads to a process-unique temporary file and deletes it on failure. So the
   LFS files (the weights) are downloaded here first, ``http_get`` appending to
   DEST/.cache/quantgate/<sha256>.part and asking for the rest with ``Range`` on the next run;
   ``hf_hub_download`` then checks the finished file's sha256 against the Hub's and records it
   (or downloads it afresh if it differs).

If the endpoint cannot be reached (or ``HF_HUB_OFFLINE=1``), the files are copied from a
snapshot of the revision in the HF cache (``HF_HUB_CACHE``), if one is there. Every failure ends
with ``protocol.fail``: one line naming the repository, the endpoint and, where a token
matters, the environment variable to set.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from huggingface_hub import (  # type: ignore[import-not-found, unused-ignore]
    HfApi,
    constants,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (  # type: ignore[import-not-found, unused-ignore]
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get  # type: ignore[import-not-found, unused-ignore]

# huggingface_hub.utils builds __all__ at run time: mypy sees no export (attr-defined).
from huggingface_hub.utils import (  # type: ignore[attr-defined, import-not-found, unused-ignore]
    build_hf_headers,
    disable_progress_bars,
)

from serving.worker.protocol import fail, progress, result

SERVING_FILES: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)
WEIGHTS = "*.safetensors"
INDEX = "*.safetensors.index.json"
PARTS = Path(".cache", "quantgate")  # DEST/.cache/huggingface is huggingface_hub's


class _Refusal(Exception):
    """A reason of our own, already one line."""


@dataclass(frozen=True)
class _Source:
    repo: str
    revision: str | None
    token: str | None
    token_env: str
    endpoint: str

    @property
    def ref(self) -> str:
        return f"hf://{self.repo}@{self.revision or constants.DEFAULT_REVISION}"

    @property
    def auth(self) -> str | bool:
        """The token, or False: never the machine's implicit one (HF_TOKEN, a login)."""
        return self.token or False


def fetch(
    repo: str, revision: str | None, dest: Path, token: str | None, token_env: str | None
) -> dict[str, Any]:
    """Download ``repo`` at ``revision`` (None: the default branch) into ``dest``; what was
    downloaded. Any error fails the worker (exit 2) with one line."""
    source = _Source(repo, revision, token, token_env or "HF_TOKEN", str(constants.ENDPOINT))
    try:
        return _fetch(source, dest)
    except Exception as error:
        reason = _explain(error, source, dest)
        if reason is None:
            traceback.print_exc()
            reason = f"fetching {source.ref} from {source.endpoint} failed: {_brief(error)}"
        fail(reason)


def _fetch(source: _Source, dest: Path) -> dict[str, Any]:
    try:
        info = HfApi().model_info(
            source.repo,
            revision=source.revision,
            files_metadata=True,
            token=source.auth,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,  # else none: a silent endpoint would hang
        )
    except (OfflineModeIsEnabled, httpx.TransportError) as error:
        return _from_cache(source, dest, error)
    except HfHubHTTPError as error:
        if error.response.status_code < 500:
            raise
        return _from_cache(source, dest, error)
    commit = str(info.sha)
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = _serving(source, list(siblings), "")
    dest.mkdir(parents=True, exist_ok=True)
    indexes = [n for n in names if fnmatch.fnmatch(n, INDEX)]
    for name in indexes:  # first: they say which shards to download
        _download(source, commit, siblings[name], dest)
    names = _shards(source, names, [dest / n for n in indexes])
    _check_space(source, dest, [siblings[n] for n in names])
    sizes = {n: _size(siblings[n]) for n in names}
    _transfer(names, sizes, lambda n: _download(source, commit, siblings[n], dest), indexes)
    shutil.rmtree(dest / PARTS, ignore_errors=True)
    return _result(source, commit, names, sizes)


def _serving(source: _Source, names: list[str], where: str) -> list[str]:
    """The top-level files that serving needs; refused without safetensors weights."""
    picked = [
        n for n in names if "/" not in n and any(fnmatch.fnmatch(n, p) for p in SERVING_FILES)
    ]
    if not any(fnmatch.fnmatch(n, WEIGHTS) for n in picked):
        listed = ", ".join(sorted(names)[:20]) + (", ..." if len(names) > 20 else "")
        raise _Refusal(
            f"{source.ref}{where} has no safetensors weights (files: {listed or 'none'}); "
            "Quantgate serves safetensors checkpoints"
        )
    return picked


def _shards(source: _Source, names: list[str], indexes: list[Path]) -> list[str]:
    """Where there is an index, the weight files it names and no others."""
    if not indexes:
        return names
    named: set[str] = set()
    for index in indexes:
        try:
            named |= set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            reason = f"{source.ref}: {index.name} is not a safetensors index: {error}"
            raise _Refusal(reason) from error
    missing = sorted(named - set(names))
    if missing:
        raise _Refusal(f"{source.ref}: its index names files it lacks: {', '.join(missing)}")
    return [n for n in names if not fnmatch.fnmatch(n, WEIGHTS) or n in named]


def _size(sibling: Any) -> int:
    return int(sibling.lfs.size if sibling.lfs is not None else sibling.size or 0)


def _part(dest: Path, sibling: Any) -> Path:
    return dest / PARTS / f"{sibling.lfs.sha256}.part"


def _check_space(source: _Source, dest: Path, siblings: list[Any]) -> None:
    need = 0
    for sibling in siblings:
        if (dest / sibling.rfilename).is_file():
            continue
        part = _part(dest, sibling) if sibling.lfs is not None else None
        need += _size(sibling) - (part.stat().st_size if part and part.is_file() else 0)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise _Refusal(
            f"not enough disk space in {dest} for {source.ref}: "
            f"{need / 1e9:.2f} GB more needed, {free / 1e9:.2f} GB free"
        )


def _transfer(
    names: list[str], sizes: dict[str, int], get: Callable[[str], object], done: list[str]
) -> None:
    """``get`` each file not ``done`` yet, reporting progress at the start and after each."""
    files_done, bytes_done = len(done), sum(sizes[n] for n in done)
    totals = {"files_total": len(names), "bytes_total": sum(sizes.values())}
    progress("download", files_done=files_done, bytes_done=bytes_done, file=None, **totals)
    for name in names:
        if name in done:
            continue
        get(name)
        files_done, bytes_done = files_done + 1, bytes_done + sizes[name]
        progress("download", files_done=files_done, bytes_done=bytes_done, file=name, **totals)


def _download(source: _Source, commit: str, sibling: Any, dest: Path) -> None:
    if sibling.lfs is not None and not (dest / sibling.rfilename).is_file():
        _resume(source, commit, sibling, dest)
    hf_hub_download(
        source.repo, sibling.rfilename, revision=commit, local_dir=dest, token=source.auth
    )


def _resume(source: _Source, commit: str, sibling: Any, dest: Path) -> None:
    """Download an LFS file into its part file from where an earlier run stopped, then put it
    in place (``hf_hub_download`` checks its sha256 next)."""
    name, size = sibling.rfilename, int(sibling.lfs.size)
    part = _part(dest, sibling)
    part.parent.mkdir(parents=True, exist_ok=True)
    with part.open("ab") as out:
        have = out.tell()
        if have > size:
            out.truncate(0)
            have = 0
        if have:
            print(f"resuming {name} at byte {have:,} of {size:,}", file=sys.stderr, flush=True)
        http_get(
            hf_hub_url(source.repo, name, revision=commit),
            out,
            resume_size=have,
            headers=build_hf_headers(token=source.auth),
            expected_size=size,
            displayed_filename=name,
        )
    part.replace(dest / name)


def _from_cache(source: _Source, dest: Path, unreachable: Exception) -> dict[str, Any]:
    """The files from a snapshot of the revision in the HF cache, when the Hub is out of reach."""
    offline = isinstance(unreachable, OfflineModeIsEnabled)
    why = "HF_HUB_OFFLINE is set" if offline else _brief(unreachable)
    try:
        folder = snapshot_download(
            source.repo,
            revision=source.revision,
            allow_patterns=list(SERVING_FILES),
            local_files_only=True,
        )
    except LocalEntryNotFoundError as error:
        how = "only partly" if isinstance(error, IncompleteSnapshotError) else "not"
        raise _Refusal(
            f"cannot reach {source.endpoint} ({why}) and {source.ref} is {how} in the cache "
            f"({constants.HF_HUB_CACHE})"
        ) from error
    snapshot = Path(folder)
    print(f"cannot reach {source.endpoint} ({why}): copying {snapshot}", file=sys.stderr)
    files = sorted(p.name for p in snapshot.iterdir() if p.is_file())
    names = _serving(source, files, f" in the cache ({snapshot})")
    names = _shards(source, names, [snapshot / n for n in names if fnmatch.fnmatch(n, INDEX)])
    sizes = {n: (snapshot / n).stat().st_size for n in names}
    dest.mkdir(parents=True, exist_ok=True)
    _transfer(names, sizes, lambda n: shutil.copyfile(snapshot / n, dest / n), [])
    shutil.rmtree(dest / PARTS, ignore_errors=True)
    return _result(source, snapshot.name, names, sizes)


def _result(
    source: _Source, commit: str, names: list[str], sizes: dict[str, int]
) -> dict[str, Any]:
    return {
        "repo": source.repo,
        "revision": source.revision or constants.DEFAULT_REVISION,
        "commit": commit,
        "endpoint": source.endpoint,
        "files": names,
        "bytes": sum(sizes.values()),
    }


def _explain(error: Exception, source: _Source, dest: Path) -> str | None:
    """One line for a failure, or None for one that is not foreseen (a bug)."""
    repo, endpoint, env = f"hf://{source.repo}", source.endpoint, source.token_env
    if isinstance(error, _Refusal):
        return str(error)
    if isinstance(error, GatedRepoError):
        if source.token:
            return f"{repo} is gated on {endpoint}: the token in {env} was not granted access"
        return f"{repo} is gated on {endpoint}: set {env} to a token that was granted access"
    if isinstance(error, RepositoryNotFoundError):
        hint = (
            f"the token in {env} cannot read it"
            if source.token
            else f"set {env} to a token that can read it"
        )
        return f"{repo}: no such repository on {endpoint} (or it is private: {hint})"
    if isinstance(error, RevisionNotFoundError):
        revision = source.revision or constants.DEFAULT_REVISION
        return f"{repo} has no revision '{revision}' on {endpoint}"
    if isinstance(error, RemoteEntryNotFoundError):
        return f"{source.ref}: {endpoint} lists a file it does not serve ({_brief(error)})"
    if isinstance(error, HfHubHTTPError):
        return _refused(error, source)
    if isinstance(error, HFValidationError):
        return f"{repo}: not a valid repository id ({_brief(error)})"
    cause = error.__cause__ if isinstance(error, LocalEntryNotFoundError) else error
    if isinstance(cause, FileMetadataError):
        return f"{endpoint} does not answer like a Hugging Face Hub: {_brief(cause)}"
    if isinstance(cause, HfHubHTTPError):
        return _refused(cause, source)
    if isinstance(error, LocalEntryNotFoundError | httpx.TransportError):
        why = _brief(cause or error)
        return f"lost {endpoint} while downloading {source.ref} ({why}); run again to resume"
    if isinstance(error, OSError):
        if error.errno is None:  # not the file system's: e.g. a body that ended short
            return f"downloading {source.ref} from {endpoint} failed: {_brief(error)}"
        return f"cannot write {dest}: {error}"
    return None


def _refused(error: Any, source: _Source) -> str:
    """An HTTP error other than a missing repository, revision or file."""
    status, detail, env = error.response.status_code, _brief(error), source.token_env
    if status == 401 and source.token:
        refusal = f"{source.endpoint} refused the token in {env} ({status}: {detail})"
        return f"{refusal}: set {env} to a valid token"
    if status in (401, 403):
        held = f"the token in {env} may not" if source.token else f"set {env} to a token that can"
        return f"{source.ref}: {source.endpoint} answered {status} ({detail}): {held} read it"
    return f"{source.endpoint} answered {status} for {source.ref}: {detail}"


def _brief(error: BaseException) -> str:
    """The error's first line: for an HTTP error the server's message if it sent one."""
    server = error.server_message if isinstance(error, HfHubHTTPError) else None
    text = str(server or error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if isinstance(error, HfHubHTTPError) else f"{type(error).__name__}: {first}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m serving.worker.hub",
        description="Download the files serving needs from a Hugging Face Hub repository.",
    )
    ap.add_argument("repo", help="org/name")
    ap.add_argument("revision", help="a branch, tag or commit ('' for the default branch)")
    ap.add_argument("dest", type=Path, help="the folder to download into")
    ap.add_argument("--token-env", default="HF_TOKEN", help="the variable holding the token")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    disable_progress_bars()
    token = os.environ.get(args.token_env) or None
    result(fetch(args.repo, args.revision or None, args.dest, token, args.token_env))


if __name__ == "__main__":
    main()
