"""The local Ray head's auth token file is created mode 600: never readable by others, not even
for the moment between writing it and restricting it."""

from __future__ import annotations

import os
import stat

import pytest

from precise.stack.ray_head import RayHead


def test_token_file_is_created_private(tmp_path, monkeypatch):
    """Every mode change and rename of a file under the state folder is watched: with a umask that
    leaves new files world-readable, no file there may ever be readable by group or others."""
    seen: list[tuple[str, int]] = []
    real_chmod, real_replace = os.chmod, os.replace

    def note(path: os.PathLike | str) -> None:
        if os.path.exists(path):
            seen.append((str(path), stat.S_IMODE(os.stat(path).st_mode)))

    def chmod(path, mode, *args, **kwargs):
        note(path)  # the mode the file had until now
        return real_chmod(path, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        note(src)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0o022)
    try:
        head = RayHead(tmp_path / "ray")
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "auth_token.tmp").write_text("left over by a crash")  # world-readable
        token = head.ensure_token()
    finally:
        os.umask(old_umask)
    assert len(token) == 64 and head.ensure_token() == token  # generated once, then reused
    assert stat.S_IMODE(head.token_path.stat().st_mode) == 0o600
    assert not (tmp_path / "ray" / "auth_token.tmp").exists()
    assert seen and all(mode & 0o077 == 0 for _, mode in seen), seen


@pytest.mark.parametrize("content", ["", "  \n"])
def test_an_empty_token_file_is_replaced(tmp_path, content):
    head = RayHead(tmp_path)
    head.token_path.write_text(content)
    assert len(head.ensure_token()) == 64
