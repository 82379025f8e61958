"""git as root in a clone that belongs to someone else (`sudo scripts/test` in one's own clone).

git refuses such a repository ("detected dubious ownership") unless it is listed in `safe.directory`.
These helpers name exactly the repository they work on, for their own calls only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def git_in(repo: Path, *args: str, timeout: float = 60) -> str:
    """Run ``git -C repo ARGS`` whoever owns ``repo``; return its standard output.
    Raise CalledProcessError if git fails."""
    return subprocess.run(
        ["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def clone(repo: Path, dest: Path, *, with_changes: bool = False) -> None:
    """``git clone repo dest`` whoever owns ``repo``. With ``with_changes``, the working tree's files
    (tracked, and untracked ones .gitignore does not exclude) are copied over the clone, so that it
    holds what a commit of them would. Raise CalledProcessError if git fails.

    The clone's source side runs in a child process (upload-pack) that ignores `-c` options, so its
    safe.directory entry goes into a global configuration file of this call's own.
    """
    git_dir = git_in(repo, "rev-parse", "--absolute-git-dir").strip()
    with tempfile.TemporaryDirectory(prefix="hasupd-gitconfig.") as tmp:
        config = Path(tmp) / "gitconfig"
        quoted = git_dir.replace("\\", "\\\\").replace('"', '\\"')
        config.write_text(f'[safe]\n\tdirectory = "{quoted}"\n')
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(dest)],
            env={**os.environ, "GIT_CONFIG_GLOBAL": str(config)},
            capture_output=True,
            timeout=120,
            check=True,
        )
    if not with_changes:
        return
    listed = git_in(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = repo / name
        target = dest / name
        if not source.exists() and not source.is_symlink():
            target.unlink(missing_ok=True)  # deleted in the working tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
