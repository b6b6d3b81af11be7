import json

import pytest

from peftshield.cli import main

FAST_LORA = ["--method", "lora", "--set", "epochs=2", "--set", "lr=3e-2", "--quiet"]


def test_tune_then_evaluate_roundtrip(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "lora"
    code = main(
        ["tune", "--backbone", tiny_bert, "--corpus", toy_csv, "--out", str(out), "--json", *FAST_LORA]
    )
    assert code == 0
    tuned = json.loads(capsys.readouterr().out)
    assert (out / "adapter_model.safetensors").is_file() and (out / "run.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["corpus"] == toy_csv and run["metrics"]["cacc"] == tuned["cacc"]
    assert main(["evaluate", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # evaluate rebuilds the very test split tune held out, so it finds the same accuracy
    assert evaluated["cacc"] == pytest.approx(tuned["cacc"])
    assert evaluated["n"] == tuned["n_test"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peftshield: error:"), err
    return err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "lora", "--set", "rank=4"], "unknown lora config key"),
        (["--method", "lora", "--set", "lr=-1"], "lr must be positive"),
        (["--set", "novalue"], "key=value"),
        (["--corpus", "no-such-corpus"], "unknown corpus"),
        (["--corpus", "missing.csv"], "missing.csv"),
    ],
)
def test_tune_bad_input_is_one_line_and_writes_nothing(extra, message, tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["tune", "--backbone", tiny_bert, "--out", str(out), "--quiet", *extra]
    assert main(args) == 2
    assert message in _error(capsys)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_tune_refuses_non_model_and_pickle_folders(toy_csv, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert main(["tune", "--backbone", str(folder), "--corpus", toy_csv, "--out", str(tmp_path / "o")]) == 2
    assert "pickle" in _error(capsys)
    assert main(["tune", "--backbone", str(tmp_path), "--corpus", toy_csv, "--out", str(tmp_path / "o")]) == 2
    assert "not a model folder" in _error(capsys)


def test_tune_refuses_bad_data_files(tiny_bert, tmp_path, capsys):
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\na good film,1\nanother one,1\nthird,1\n")
    assert (
        main(["tune", "--backbone", tiny_bert, "--corpus", str(one_class), "--out", str(tmp_path / "o")]) == 2
    )
    assert "class" in _error(capsys)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 film,1\nbad,0\n".encode("latin-1"))
    assert main(["tune", "--backbone", tiny_bert, "--corpus", str(latin), "--out", str(tmp_path / "o")]) == 2
    assert "UTF-8" in _error(capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text('text,label\ngood,1\n"",0\n')
    assert main(["tune", "--backbone", tiny_bert, "--corpus", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "lora"
    out.mkdir()
    assert main(["tune", "--backbone", tiny_bert, "--corpus", toy_csv, "--out", str(out), *FAST_LORA]) == 2
    assert "already exists" in _error(capsys)


def test_evaluate_bad_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not a folder" in _error(capsys)
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a tuned model" in _error(capsys)


def test_help_is_available(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_demo_stages_parse_into_the_commands_they_name(tmp_path):
    """``demo`` runs its stages through the bench / report sub-commands without importing the CLI."""
    import argparse

    from peftshield.commands import bench, demo, report

    args = argparse.Namespace(out=str(tmp_path / "demo"), device="cpu")
    parser = demo.stage_parser()
    parsed = [parser.parse_args(argv) for _, argv in demo.stage_commands(args)]
    assert [p.command for p in parsed] == ["bench", "report"]
    assert parsed[0].func.__module__ == bench.__name__ and parsed[1].func.__module__ == report.__name__
    assert parsed[0].results == str(tmp_path / "demo" / "results")
    assert parsed[0].jobs == demo.default_jobs("cpu")  # two one-thread workers on a 2-core CPU
    pinned = argparse.Namespace(out=str(tmp_path / "demo"), device="cpu", jobs=1)
    assert parser.parse_args(demo.stage_commands(pinned)[0][1]).jobs == 1


def _command_paths() -> list[list[str]]:
    """Every command and sub-command of ``peftshield``, read from the parser itself."""
    import argparse

    from peftshield.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield [*path, name]
                    yield from walk(sub, [*path, name])

    return list(walk(build_parser(), []))


def example_lines(help_text: str, command: list[str]) -> list[str]:
    """Lines under an ``examples:`` heading that run ``peftshield COMMAND ...`` (possibly piped into)."""
    lines = help_text.splitlines()
    if "examples:" not in lines:
        return []
    start = lines.index("examples:") + 1
    wanted = "peftshield " + " ".join(command)
    found = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break  # the next section
        text = line.strip()
        if text == wanted or text.startswith(wanted + " ") or f"| {wanted}" in text:
            found.append(text)
    return found


def test_example_lines_are_recognised_and_a_bare_help_is_not():
    help_text = (
        "usage: peftshield x\n\noptions:\n  --out OUT  (default: x)\n\nexamples:\n  peftshield x --out a\n"
    )
    assert example_lines(help_text, ["x"]) == ["peftshield x --out a"]
    assert example_lines("usage: peftshield x\n\noptions:\n  --example  see peftshield x\n", ["x"]) == []
    assert example_lines(help_text, ["y"]) == []  # an example of another command does not count


@pytest.mark.parametrize("command", _command_paths(), ids=" ".join)
def test_cli_help_teaches(command, capsys):
    """Each command's --help holds at least one example line that runs that very command."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: peftshield " + " ".join(command))
    assert example_lines(out, command), f"`peftshield {' '.join(command)} --help` has no example line"
