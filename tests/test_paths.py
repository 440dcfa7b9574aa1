"""Store paths: names and challenge tokens can never leave their folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from certproxy.certs import FileStore, InvalidName, is_valid_token, name_for_domain
from certproxy.certs.paths import StorePaths


@pytest.mark.parametrize("token", [
    "..", "../x", "%2e%2e", "%2e%2e%2fetc%2fpasswd", "a/b", "a\x00b", "", ".hidden",
    "a b", "a.b", "x" * 300, "\\..\\x",
])
def test_bad_tokens_are_refused(token: str, tmp_path: Path) -> None:
    assert not is_valid_token(token)
    with pytest.raises(InvalidName):
        StorePaths(tmp_path).challenge(token)
    assert FileStore(tmp_path).read_challenge(token) is None


def test_good_tokens_map_into_the_challenge_folder(tmp_path: Path) -> None:
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA_x"
    path = StorePaths(tmp_path).challenge(token)
    assert path.parent == tmp_path / "challenges" and path.name == token


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", ".x", "", "a\x00", "a..b", "*"])
def test_bad_certificate_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        StorePaths(tmp_path).live_dir(name)


def test_names_for_domains_follow_certbot() -> None:
    assert name_for_domain("Reg.Example.com.") == "reg.example.com"
    assert name_for_domain("*.example.com") == "example.com"
    assert StorePaths(Path("/s")).live_dir("example.com-0001") == Path("/s/live/example.com-0001")


def test_challenge_symlinks_are_not_followed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.ensure_layout()
    secret = tmp_path / "secret"
    secret.write_text("do not serve")
    (tmp_path / "challenges" / "tok").symlink_to(secret)
    (tmp_path / "challenges" / "good").write_text("good.thumb")
    assert store.read_challenge("tok") is None
    assert store.read_challenge("good") == b"good.thumb"
