"""`diptych serve` options and start-up errors."""

from __future__ import annotations

import pytest

from diptych.errors import WeightsError
from diptych.serve.cli import build_serve_parser, run_serve, settings_from_args


def test_defaults_listen_on_localhost():
    args = build_serve_parser().parse_args([])
    assert (args.host, args.port, args.max_batch, args.queue, args.timeout) == ("127.0.0.1", 8000, 4, 32, 120.0)
    settings = settings_from_args(args)
    assert settings.model_name == "shapes" and settings.ui


def test_options_become_settings(tmp_path):
    args = build_serve_parser().parse_args(
        ["--max-batch", "8", "--queue", "3", "--timeout", "9", "--db", str(tmp_path / "s.db"), "--no-ui"]
    )
    settings = settings_from_args(args)
    assert (settings.max_batch, settings.queue_size, settings.timeout_s) == (8, 3, 9.0)
    assert settings.database == tmp_path / "s.db" and not settings.ui


def test_missing_builtin_weights_name_them_and_suggest_base(monkeypatch, tmp_path):
    from diptych.shapes import models

    monkeypatch.setattr(models, "WEIGHTS", tmp_path / "weights")
    args = build_serve_parser().parse_args(["--db", str(tmp_path / "s.db")])
    with pytest.raises(WeightsError, match=r"missing from .*weights.*pass --base"):
        run_serve(args)


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        build_serve_parser().parse_args(["--help"])
    assert "curl -F image=@cat.png" in capsys.readouterr().out
