"""The Hugging Face Hub, through `huggingface_hub` (the field's library): a model named "user/name" is read from the
local Hugging Face cache only; `pull` (`ebt pull`) is the one place that downloads, `push` (`ebt push`) the one that
uploads. What goes up is a pretrained folder (`ebt.training.pretrained`): weights, config, tokenizer and a model
card, never trainer state.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ebt.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
UPLOADED = ["model.safetensors", "config.json", "tokenizer.json", "README.md"]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError("Hugging Face Hub support needs huggingface_hub: pip install "
                        "'energy-based-transformers[hub]'") from None
    return huggingface_hub


def looks_like_repo(name: str) -> bool:
    """"user/name" whose first part is no local folder (so a mistyped "runs/lm-tinny" stays a missing path)."""
    return bool(REPO_ID.match(str(name))) and not Path(str(name).split("/")[0]).exists()


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub model name: write user/name")


def cached_snapshot(repo_id: str, revision: Optional[str] = None) -> Path:
    """The folder of `repo_id` in the local Hugging Face cache ($HF_HUB_CACHE); never downloads."""
    hub = _hub()
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (hub.errors.LocalEntryNotFoundError, hub.errors.HFValidationError, FileNotFoundError):
        raise UserError(f"{repo_id!r} does not exist as a folder here nor as a model in the Hugging Face cache: pass a "
                        f"run or checkpoint folder, or download the Hub model once with `ebt pull {repo_id}`") from None


def pull(repo_id: str, revision: Optional[str] = None, token: Optional[str] = None) -> Path:
    """Download `repo_id` into the Hugging Face cache (the only download in ebt); returns its folder."""
    check_repo_id(repo_id)
    hub = _hub()
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, token=token, allow_patterns=UPLOADED))
    except hub.errors.RepositoryNotFoundError:
        raise UserError(f"the Hub has no model {repo_id!r} you can read: check the name (and --token for a private "
                        "one)") from None
    except hub.errors.RevisionNotFoundError:
        raise UserError(f"{repo_id!r} has no revision {revision!r}: check --revision") from None
    except Exception as exc:   # offline: huggingface_hub's own errors, or its HTTP client's (httpx) transport errors
        raise UserError(f"cannot download {repo_id!r} ({type(exc).__name__}; offline?): connect and rerun, or copy the "
                        "model folder here and pass its path") from None


def push(folder: Path, repo_id: str, private: bool = False, token: Optional[str] = None,
         message: Optional[str] = None) -> str:
    """Upload a pretrained folder's files to `repo_id` (created if needed); returns the commit URL."""
    check_repo_id(repo_id)
    hub = _hub()
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=UPLOADED,
                                 commit_message=message or "Upload an ebt model")
    except hub.errors.LocalTokenNotFoundError:
        raise UserError("pushing needs a Hugging Face token: run `hf auth login` or pass --token") from None
    except Exception as exc:   # HTTP errors, and the HTTP client's transport errors when offline
        raise UserError(f"cannot push to {repo_id!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): check "
                        "the token's write access and the network") from None
    return str(getattr(info, "commit_url", info))
