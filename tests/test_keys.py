"""`fedpit flower certs` / `keys` (issue 13, item 4): never overwrite a key or certificate without --force, never write
outside --out, private keys are mode 600 from the moment they exist."""

from __future__ import annotations

import os

import pytest

from fedpit.cli import main
from fedpit.errors import FedpitError
from fedpit.flower.deploy import check_key_name, make_certificates, make_node_key, make_node_keys


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedpit: error: "), err
    return err[0]


def test_existing_keys_and_certificates_are_never_overwritten_without_force(tmp_path, capsys):
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    assert main(["flower", "certs", "--out", str(certs), "--host", "fl.example.org"]) == 0
    assert main(["flower", "keys", "--out", str(keys), "site-a", "site-b"]) == 0
    before = {p: p.read_bytes() for d in (certs, keys) for p in d.iterdir()}
    assert len(before) == 8
    capsys.readouterr()

    assert main(["flower", "certs", "--out", str(certs), "--host", "other.example.org"]) == 2
    line = _one_line_error(capsys)
    assert "ca.key" in line and "--force" in line
    assert main(["flower", "keys", "--out", str(keys), "site-c", "site-a"]) == 2  # one clash refuses all
    assert "site-a" in _one_line_error(capsys)
    assert not (keys / "site-c").exists()  # checked before the first key was made
    assert {p: p.read_bytes() for d in (certs, keys) for p in d.iterdir()} == before

    assert main(["flower", "keys", "--out", str(keys), "--force", "site-a"]) == 0
    assert (keys / "site-a").read_bytes() != before[keys / "site-a"]
    assert (keys / "site-b").read_bytes() == before[keys / "site-b"]
    assert main(["flower", "certs", "--out", str(certs), "--force"]) == 0
    assert (certs / "ca.key").read_bytes() != before[certs / "ca.key"]
    assert (certs / "ca.key").stat().st_mode & 0o777 == 0o600
    assert not [p for p in certs.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["../../escape", "a/b", "", ".", "..", "/abs", " lead", "tab\tname", "nul\0"])
def test_key_names_must_be_plain_file_names(tmp_path, capsys, name):
    out = tmp_path / "deep" / "keys"
    with pytest.raises(FedpitError, match="not a plain file name"):
        check_key_name(name)
    if "\0" not in name:  # argv cannot carry NUL
        assert main(["flower", "keys", "--out", str(out), name]) == 2
        _one_line_error(capsys)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_repeated_or_colliding_names_are_refused_before_anything_is_written(tmp_path):
    for names in (["a", "a"], ["a", "a.pub"]):
        with pytest.raises(FedpitError, match="collide"):
            make_node_keys(tmp_path / "k", names)
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("kind", ["certs", "keys"])
def test_out_that_is_a_file_or_cannot_be_created_is_a_one_line_error(tmp_path, capsys, kind):
    afile = tmp_path / "afile"
    afile.write_text("x")
    extra = ["n1"] if kind == "keys" else []
    assert main(["flower", kind, "--out", str(afile), *extra]) == 2
    assert "not a folder" in _one_line_error(capsys)
    assert main(["flower", kind, "--out", str(afile / "sub"), *extra]) == 2
    _one_line_error(capsys)
    assert afile.read_text() == "x"


def test_private_keys_are_created_with_mode_600_never_chmod_ed(tmp_path, monkeypatch):
    # The old code wrote the key with the umask's mode (644) and chmod-ed it afterwards; now the file is created
    # 600 by os.open itself, so no chmod is needed, even with a permissive umask.
    def no_chmod(*a, **k):
        raise AssertionError("a key file was chmod-ed after creation")

    monkeypatch.setattr(os, "chmod", no_chmod)
    created = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **k):
        created.append((os.path.basename(path), flags, mode))
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", spy_open)
    old = os.umask(0)
    try:
        priv, pub = make_node_key(tmp_path / "keys", "site-a")
        files = make_certificates(tmp_path / "certs")
    finally:
        os.umask(old)
    assert priv.stat().st_mode & 0o777 == 0o600 and pub.stat().st_mode & 0o777 == 0o644
    assert files["ca_key"].stat().st_mode & 0o777 == 0o600 and files["key"].stat().st_mode & 0o777 == 0o600
    assert files["ca"].stat().st_mode & 0o777 == 0o644
    modes = {name: mode for name, _, mode in created}
    assert modes["site-a"] == modes["ca.key"] == modes["server.key"] == 0o600
    assert all(flags & os.O_EXCL for _, flags, _ in created)


def test_a_key_file_created_meanwhile_is_not_clobbered(tmp_path, monkeypatch):
    # O_EXCL: even if the file appears between the existence check and the write, it is refused, not replaced
    from fedpit.flower import deploy

    monkeypatch.setattr(deploy, "_prepare_out", lambda out, files, force: out.mkdir(parents=True, exist_ok=True))
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "site-a").write_text("someone else's key")
    with pytest.raises(FedpitError, match="already exists"):
        make_node_key(tmp_path / "k", "site-a")
    assert (tmp_path / "k" / "site-a").read_text() == "someone else's key"
