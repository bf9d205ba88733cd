from __future__ import annotations

from mpo_fast.cli import EXIT_BAD_INPUT, main


def test_eval_on_a_folder_without_a_run_is_bad_input(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--against", "base"]) == EXIT_BAD_INPUT
    assert "config.yaml" in capsys.readouterr().err


def test_eval_with_a_missing_checkpoint_names_the_ones_there(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--checkpoint", "step-7", "--against", "base"]) == EXIT_BAD_INPUT
    assert "steps [2, 4]" in capsys.readouterr().err


def test_eval_requires_against(tmp_path, capsys):
    try:
        main(["eval", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    assert "--against" in capsys.readouterr().err


def test_the_demo_ends_by_writing_the_report(tiny_run, tmp_path, capsys):
    import shutil

    from mpo_fast.cli import _write_demo_report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _write_demo_report(str(run))
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    assert (run / "report.html").stat().st_size > 10_000
    _write_demo_report(str(tmp_path / "missing"))
    assert "mpo-fast report" in capsys.readouterr().err
