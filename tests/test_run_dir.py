"""The run directory: --force replaces only what the library made."""

import pytest

from vpntk_jax import cli
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.errors import RunDirError
from vpntk_jax.public import pretrain
from vpntk_jax.staging import check_replaceable
from vpntk_jax.run_files import CONFIG, RUN_DIR_NAMES


def _users_folder(path):
  path.mkdir()
  (path / "thesis.tex").write_text("years of work")
  (path / "figures").mkdir()
  (path / "figures" / "plot.pdf").write_bytes(b"%PDF")
  return {p.relative_to(path): p.read_bytes() if p.is_file() else None
          for p in path.rglob("*")}


def _unchanged(path, before):
  return before == {p.relative_to(path): p.read_bytes() if p.is_file() else None
                    for p in path.rglob("*")}


def test_synthesize_force_refuses_a_folder_it_did_not_make(tmp_path, capsys):
  out = tmp_path / "mine"
  before = _users_folder(out)
  assert cli.main(["synthesize", "--out", str(out), "--force", "--steps", "1", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "is not a vpntk run directory" in err and "figures" in err and "thesis.tex" in err
  assert _unchanged(out, before) and not (tmp_path / "mine.partial").exists()


def test_pretrain_force_refuses_a_folder_it_did_not_make(tmp_path):
  out = tmp_path / "mine"
  before = _users_folder(out)
  with pytest.raises(RunDirError, match="is not a public-models directory"):
    pretrain(PretrainConfig(), str(out), force=True, quiet=True)
  assert _unchanged(out, before)


def test_a_run_directory_with_a_foreign_file_is_refused_too(tmp_path):
  (tmp_path / CONFIG).write_text("{}")
  check_replaceable(str(tmp_path), RUN_DIR_NAMES, CONFIG, "a run")
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(RunDirError, match="it also holds notes.txt"):
    check_replaceable(str(tmp_path), RUN_DIR_NAMES, CONFIG, "a run")


def test_an_out_that_cannot_be_created_is_an_error_naming_it(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  out = blocker / "run"
  assert cli.main(["synthesize", "--out", str(out), "--steps", "1", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "cannot create the directory" in err and f"{blocker} is a file" in err
  assert blocker.read_text() == "x"
