"""What a job uploads: the files the job needs from this checkout, never secrets beside them.

    from rsam_dist.jobs.upload import shipped_files, staged_project
    shipped_files(project_root())          # [Path('configs/digits.yaml'), Path('pyproject.toml'), ...]
    with staged_project(project_root()) as directory:   # a temporary copy of just those files
        runtime_env = {"working_dir": str(directory)}

Ray packs a job's working_dir into the cluster's object store, where anyone holding the cluster
token can read it. Uploading the checkout minus a few excludes sent whatever lay in it: an
untracked `.env`, a `*.pem`, a credentials file. So the upload is an allow-list, SHIPPED (the
package, the config and sweep files, the two files that pin the environment), copied into a
temporary directory that becomes the working_dir; inside those folders hidden files, symlinks,
caches and files named like keys or credentials (SECRET_NAMES) are left out as well.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHIPPED = ("rsam_dist", "configs", "sweeps", "pyproject.toml", "requirements.lock")
"""Top-level folders and files of the project that a job receives: all it runs or reads."""
SECRET_NAMES = (
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx", "*.gpg", "*.asc", "*.ovpn",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*credential*", "*secret*", "*password*",
    "*token*", "*.env", "env.*", "netrc", "_netrc", "*.tfstate*", "kubeconfig*",
)
"""File names (case-insensitive) never uploaded, wherever they lie; hidden files (.env, .netrc,
.aws/...) never are either."""
SKIPPED_NAMES = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", "*~", "*.swp")
"""Caches and editor leftovers: not secret, just not needed."""


def looks_secret(name: str) -> bool:
    """Whether a file or folder name is hidden or looks like a key, token or credentials file."""
    lowered = name.lower()
    return name.startswith(".") or any(fnmatch.fnmatch(lowered, pattern) for pattern in SECRET_NAMES)


def _skipped(name: str) -> bool:
    return looks_secret(name) or any(fnmatch.fnmatch(name, pattern) for pattern in SKIPPED_NAMES)


def shipped_files(root: Path) -> list[Path]:
    """Every file a job uploads, relative to the project root, sorted."""
    found = []
    for top in SHIPPED:
        path = root / top
        if path.is_symlink():
            continue
        if path.is_file():
            found.append(Path(top))
            continue
        for directory, subdirectories, files in os.walk(path):  # never follows symlinked folders
            subdirectories[:] = sorted(d for d in subdirectories if not _skipped(d)
                                       and not Path(directory, d).is_symlink())
            for name in files:
                file = Path(directory, name)
                if not _skipped(name) and not file.is_symlink() and file.is_file():
                    found.append(file.relative_to(root))
    return sorted(found)


def why_not_shipped(root: Path, path: Path) -> str | None:
    """None if a job receives `path` (absolute, resolved), else why not, in a few words."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return f"it is outside the project {root}"
    if not relative.parts or relative.parts[0] not in SHIPPED:
        return f"jobs upload only {', '.join(SHIPPED)} of the project"
    if any(_skipped(part) for part in relative.parts):
        return "its name marks it as hidden, a cache or a secret (key, token, credentials), which jobs never upload"
    return None


@contextmanager
def staged_project(root: Path) -> Iterator[Path]:
    """A temporary directory holding exactly `shipped_files(root)`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rsam-job-") as staging:
        for relative in shipped_files(root):
            target = Path(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, target)
        yield Path(staging)
