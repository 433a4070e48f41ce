import pytest

from specdistill.data.corpora import corpus_files, split_files, stdlib_files, token_chunks


def test_stdlib_corpus_is_real_python():
    files = stdlib_files()
    assert len(files) > 300 and all(f.suffix == ".py" for f in files)
    assert not any("test" in f.parts for f in files)


def test_chunks_from_a_folder(tmp_path, char_tokenizer):
    for i in range(3):
        (tmp_path / f"f{i}.py").write_text("def f():\n    return x\n" * 10)
    files = corpus_files(str(tmp_path))
    chunks = token_chunks(char_tokenizer, files, seq_len=16, max_tokens=200, progress=False)
    assert chunks.shape == (12, 16)


def test_split_is_disjoint_and_reproducible(tmp_path):
    files = [tmp_path / f"{i}.txt" for i in range(20)]
    train, held = split_files(files, 0.2, seed=1)
    assert len(held) == 4 and not set(train) & set(held)
    assert split_files(files, 0.2, seed=1) == (train, held)


def test_clear_errors(tmp_path, char_tokenizer):
    with pytest.raises(FileNotFoundError, match="stdlib"):
        corpus_files(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no text files"):
        corpus_files(str(tmp_path))
    (tmp_path / "a.txt").write_text("ab")
    with pytest.raises(ValueError, match="fewer than one chunk"):
        token_chunks(char_tokenizer, [tmp_path / "a.txt"], seq_len=64, max_tokens=1000, progress=False)
