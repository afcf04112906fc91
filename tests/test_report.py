"""Report CLI on bad input (the full report is exercised on a real search in test_search.py)."""

from hpo.report import main


def test_report_on_a_folder_that_is_no_experiment_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a zsl-hpo experiment directory" in err and len(err.strip().splitlines()) == 1
